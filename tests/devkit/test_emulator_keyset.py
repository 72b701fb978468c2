"""The emulator's key-set generator: realistic, varied, and named by its seed."""

from __future__ import annotations

import re
from collections import Counter

from cckm_refresh.keyids import KeyIdKind, classify_key_id
from devkit.ctm_emulator import generate_keys

NAME = re.compile(r"[a-z]+(-[a-z]+)*-key-\d{3}")


def test_the_same_seed_gives_the_same_keys_and_another_seed_other_keys() -> None:
    assert generate_keys(20, seed=3) == generate_keys(20, seed=3)
    assert generate_keys(20, seed=3)[0]["id"] != generate_keys(20, seed=4)[0]["id"]


def test_ids_and_ocids_are_what_the_refresh_function_accepts() -> None:
    keys = generate_keys(200, tenancies=4, seed=5)

    assert len({k["id"] for k in keys}) == 200
    assert len({k["oci_params"]["key_id"] for k in keys}) == 200
    for key in keys:
        assert classify_key_id(key["id"])[0] is KeyIdKind.CCKM
        assert classify_key_id(key["oci_params"]["key_id"])[0] is KeyIdKind.OCID
        assert re.fullmatch(
            r"ocid1\.keyversion\.[a-z0-9._-]+", key["oci_params"]["current_key_version"]
        )


def test_keys_spread_over_tenancies_regions_and_vaults() -> None:
    keys = generate_keys(120, tenancies=4, vaults_per_tenancy=3, seed=1)

    assert len({k["tenancy"] for k in keys}) == 4
    assert len({k["vault_id"] for k in keys}) == 12
    assert len({k["oci_params"]["vault_name"] for k in keys}) == 12
    assert len({k["region"] for k in keys}) >= 3


def test_names_algorithms_protection_and_states_look_like_a_real_estate() -> None:
    keys = generate_keys(300, seed=2)
    params = [k["oci_params"] for k in keys]

    assert all(NAME.fullmatch(p["display_name"]) for p in params)
    assert {p["algorithm"] for p in params} == {"AES", "RSA", "ECDSA"}
    assert {p["protection_mode"] for p in params} == {"HSM", "SOFTWARE"}
    states = Counter(p["lifecycle_state"] for p in params)
    assert set(states) == {"ENABLED", "DISABLED"}
    assert states["DISABLED"] < states["ENABLED"] / 5
    assert params[0]["lifecycle_state"] == "ENABLED"


def test_an_ecdsa_key_names_its_curve_and_the_others_none() -> None:
    for key in generate_keys(100, seed=9):
        params = key["oci_params"]
        assert (params["curve_id"] != "") == (params["algorithm"] == "ECDSA")
