"""Realistic CCKM OCI key objects: many tenancies, regions, vaults and compartments.

The shape is CCKM's key object (``GET /api/v1/cckm/oci/keys/{id}``); the values follow OCI's
conventions (OCIDs of ``[a-z0-9._-]`` with the region's three-letter code, lengths in bytes,
curve names). Everything is drawn from ``random.Random(seed)``, so a seed names a key set.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_REGIONS = ("us-ashburn-1", "us-phoenix-1", "eu-frankfurt-1", "uk-london-1", "ap-tokyo-1")
REGION_CODES = {
    "us-ashburn-1": "iad",
    "us-phoenix-1": "phx",
    "us-sanjose-1": "sjc",
    "ca-toronto-1": "yyz",
    "sa-saopaulo-1": "gru",
    "eu-frankfurt-1": "fra",
    "eu-amsterdam-1": "ams",
    "eu-zurich-1": "zrh",
    "uk-london-1": "lhr",
    "ap-tokyo-1": "nrt",
    "ap-sydney-1": "syd",
    "ap-mumbai-1": "bom",
}
TENANCY_NAMES = (
    "acme-prod",
    "acme-payments",
    "acme-analytics",
    "acme-shared-services",
    "acme-eu",
    "acme-apac",
    "acme-dr",
    "acme-dev",
)
COMPARTMENTS = ("security", "payments", "platform", "data", "integration")
APPLICATIONS = (
    "payments",
    "orders",
    "billing",
    "ledger",
    "identity",
    "analytics",
    "customer",
    "inventory",
    "messaging",
    "backup",
)
# purpose -> algorithms that make sense for it
PURPOSES: dict[str, tuple[str, ...]] = {
    "db-master-key": ("AES",),
    "tde-key": ("AES",),
    "object-storage-key": ("AES",),
    "backup-key": ("AES",),
    "streaming-key": ("AES",),
    "secrets-wrapping-key": ("AES", "RSA"),
    "signing-key": ("RSA", "ECDSA"),
    "token-signing-key": ("ECDSA", "RSA"),
}
LENGTHS: dict[str, tuple[tuple[int, str], ...]] = {
    "AES": ((32, ""), (32, ""), (32, ""), (24, ""), (16, "")),
    "RSA": ((256, ""), (384, ""), (512, "")),
    "ECDSA": ((32, "NIST_P256"), (48, "NIST_P384"), (66, "NIST_P521")),
}
ACCOUNT = "kylo:kylo:admin:accounts:kylo"
_BASE32 = "abcdefghijklmnopqrstuvwxyz234567"
_EPOCH = dt.datetime(2024, 3, 4, 8, 30, tzinfo=dt.UTC)


def iso_micro(moment: dt.datetime) -> str:
    """CTM's timestamp format: ISO 8601 UTC with microseconds and ``Z``."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def region_code(region: str) -> str:
    """OCI's short code of a region (``us-ashburn-1`` -> ``iad``)."""
    return REGION_CODES.get(region, region.split("-")[1][:3] if "-" in region else region[:3])


def _token(rng: random.Random, length: int) -> str:
    return "".join(rng.choice(_BASE32) for _ in range(length))


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


@dataclass(frozen=True)
class _Vault:
    tenancy: str
    tenancy_ocid: str
    region: str
    name: str
    vault_id: str
    cckm_vault_id: str
    ocid_part: str
    compartments: tuple[tuple[str, str], ...]


def _vaults(
    rng: random.Random, tenancies: int, regions: Sequence[str], per_tenancy: int
) -> list[_Vault]:
    vaults = []
    for t in range(tenancies):
        tenancy = TENANCY_NAMES[t] if t < len(TENANCY_NAMES) else f"acme-tenancy-{t + 1:02d}"
        tenancy_ocid = f"ocid1.tenancy.oc1..aaaaaaaa{_token(rng, 52)}"
        compartments = tuple(
            (name, f"ocid1.compartment.oc1..aaaaaaaa{_token(rng, 52)}")
            for name in rng.sample(COMPARTMENTS, 3)
        )
        for v in range(per_tenancy):
            region = regions[(t + v) % len(regions)]
            vaults.append(
                _Vault(
                    tenancy=tenancy,
                    tenancy_ocid=tenancy_ocid,
                    region=region,
                    name=f"{tenancy}-{region_code(region)}-vault-{v + 1:02d}",
                    vault_id=_uuid(rng),
                    cckm_vault_id=_uuid(rng),
                    ocid_part=f"b{_token(rng, 17)}",
                    compartments=compartments,
                )
            )
    return vaults


def new_key_version(key_ocid: str, rng: random.Random) -> str:
    """A fresh ``ocid1.keyversion...`` for the key ``key_ocid`` (as OCI names a rotation)."""
    parts = key_ocid.split(".")
    if len(parts) >= 6 and parts[0] == "ocid1" and parts[1] == "key":
        realm, region, vault_part, key_part = parts[2], parts[3], parts[4], ".".join(parts[5:])
        return f"ocid1.keyversion.{realm}.{region}.{vault_part}.{_token(rng, 13)}.{key_part}"
    return f"ocid1.keyversion.oc1..{_token(rng, 13)}.{_token(rng, 58)}"


def generate_keys(
    count: int,
    tenancies: int = 3,
    regions: Sequence[str] = DEFAULT_REGIONS,
    vaults_per_tenancy: int = 2,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """``count`` CCKM OCI key objects spread over tenancies, regions and vaults.

    Names look like ``payments-db-master-key-017``; algorithms AES, RSA and ECDSA; protection
    HSM or SOFTWARE; every twelfth key DISABLED, the rest ENABLED (the first always ENABLED).
    The same arguments always give the same keys, ids included.
    """
    if count < 0 or tenancies < 1 or vaults_per_tenancy < 1 or not regions:
        raise ValueError("count >= 0, tenancies >= 1, vaults_per_tenancy >= 1, regions non-empty")
    rng = random.Random(seed)
    vaults = _vaults(rng, tenancies, tuple(regions), vaults_per_tenancy)
    keys = []
    created = _EPOCH
    for i in range(count):
        # Every vault gets one key before the rest are spread at random.
        vault = vaults[i % len(vaults)] if i < len(vaults) else rng.choice(vaults)
        draw = _draw_key(rng, i, vault, created)
        keys.append(_key_object(i, vault, draw))
        created = draw.created
    return keys


@dataclass(frozen=True)
class _KeyDraw:
    """Everything random about one key, drawn in one fixed order so a seed names a key set."""

    application: str
    purpose: str
    algorithm: str
    length: int
    curve: str
    compartment_name: str
    compartment_id: str
    key_id: str
    key_ocid: str
    created: dt.datetime
    oci_created: dt.datetime
    refreshed: dt.datetime
    material_origin: str
    key_version: str
    protection_mode: str
    cost_center: str


def _draw_key(rng: random.Random, index: int, vault: _Vault, previous: dt.datetime) -> _KeyDraw:
    """The random values of key ``index``, created some minutes after ``previous``.

    The order of the ``rng`` calls is part of the seed's meaning: do not reorder them.
    """
    application = rng.choice(APPLICATIONS)
    purpose = rng.choice(tuple(PURPOSES))
    algorithm = rng.choice(PURPOSES[purpose])
    length, curve = rng.choice(LENGTHS[algorithm])
    compartment_name, compartment_id = rng.choice(vault.compartments)
    key_id = _uuid(rng)
    code = region_code(vault.region)
    key_ocid = f"ocid1.key.oc1.{code}.{vault.ocid_part}.ab{code[:2]}{_token(rng, 56)}"
    created = previous + dt.timedelta(
        minutes=rng.randint(5, 600), microseconds=rng.randint(0, 999_999)
    )
    oci_created = created - dt.timedelta(seconds=rng.randint(1, 90))
    refreshed = created + dt.timedelta(seconds=rng.randint(1, 40))
    material_origin = "native" if rng.random() < 0.85 else "cckm"
    key_version = new_key_version(key_ocid, rng)
    protection_mode = "HSM" if rng.random() < 0.7 else "SOFTWARE"
    cost_center = f"cc-{rng.randint(1000, 9999)}"
    return _KeyDraw(
        application=application,
        purpose=purpose,
        algorithm=algorithm,
        length=length,
        curve=curve,
        compartment_name=compartment_name,
        compartment_id=compartment_id,
        key_id=key_id,
        key_ocid=key_ocid,
        created=created,
        oci_created=oci_created,
        refreshed=refreshed,
        material_origin=material_origin,
        key_version=key_version,
        protection_mode=protection_mode,
        cost_center=cost_center,
    )


def _display_name(index: int, draw: _KeyDraw) -> str:
    return f"{draw.application}-{draw.purpose}-{index + 1:03d}"


def _key_object(index: int, vault: _Vault, draw: _KeyDraw) -> dict[str, Any]:
    """CCKM's key object for key ``index``: CCKM's own fields, then OCI's under ``oci_params``."""
    display_name = _display_name(index, draw)
    return {
        "id": draw.key_id,
        "uri": f"kylo:kylo:cckm:oci-key:{display_name}-{draw.key_id}",
        "account": ACCOUNT,
        "createdAt": iso_micro(draw.created),
        "updatedAt": iso_micro(draw.refreshed),
        "cloud_name": "oci",
        "vault_id": vault.vault_id,
        "cckm_vault_id": vault.cckm_vault_id,
        "tenancy": vault.tenancy,
        "region": vault.region,
        "compartment_name": draw.compartment_name,
        "key_material_origin": draw.material_origin,
        "refreshed_at": iso_micro(draw.refreshed),
        "auto_rotate": False,
        "oci_params": _oci_params(index, vault, draw),
    }


def _oci_params(index: int, vault: _Vault, draw: _KeyDraw) -> dict[str, Any]:
    """The key as OCI describes it (every twelfth key DISABLED)."""
    return {
        "compartment_id": draw.compartment_id,
        "current_key_version": draw.key_version,
        "display_name": _display_name(index, draw),
        "key_id": draw.key_ocid,
        "algorithm": draw.algorithm,
        "length": draw.length,
        "curve_id": draw.curve,
        "lifecycle_state": "DISABLED" if index % 12 == 11 else "ENABLED",
        "protection_mode": draw.protection_mode,
        "is_primary": True,
        "vault_name": vault.name,
        "time_created": _oci_millis(draw.oci_created),
        "time_of_deletion": "",
        "replication_id": "",
        "restored_from_key_id": "",
        "defined_tags": {"Operations": {"CostCenter": draw.cost_center}},
        "freeform_tags": {"app": draw.application, "owner": f"{draw.application}-team"},
    }


def _oci_millis(moment: dt.datetime) -> str:
    """OCI's timestamp format: milliseconds and ``Z`` (``moment`` is already UTC)."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
