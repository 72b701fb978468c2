"""The emulator's fault switches and OCI's per-tenancy read window."""

from __future__ import annotations

from devkit.ctm_emulator import MALFORMED_MODES, Faults, KeyFailure, ListChurn
from devkit.ctm_emulator.faults import TenancyReadWindow


def test_the_read_window_admits_up_to_the_limit_per_tenancy_per_second() -> None:
    window = TenancyReadWindow()

    admitted = [window.admit("acme-prod", 2, 100.0, limit=10) for _ in range(6)]

    assert admitted == [True] * 5 + [False]
    assert window.admit("acme-dev", 2, 100.0, limit=10)
    assert not window.admit("acme-prod", 1, 100.999, limit=10)
    assert window.admit("acme-prod", 2, 101.0, limit=10)


def test_a_throttled_call_spends_no_reads() -> None:
    window = TenancyReadWindow()
    assert window.admit("t", 2, 0.0, limit=3)
    assert not window.admit("t", 2, 0.1, limit=3)
    assert window.admit("t", 1, 0.2, limit=3)


def test_no_limit_admits_everything() -> None:
    window = TenancyReadWindow()
    assert all(window.admit("t", 2, 0.0, limit=None) for _ in range(1000))


def test_bursts_queue_up_in_order() -> None:
    faults = Faults()
    faults.fail_next(2, 503)
    faults.drop_next(1)

    assert [faults.take_burst() for _ in range(4)] == [503, 503, 0, None]


def test_a_key_failure_counts_down_and_a_plain_status_stays() -> None:
    faults = Faults()
    faults.fail_keys["a"] = KeyFailure(503, times=2)
    faults.fail_keys["b"] = 403

    assert [faults.take_key_failure("a") for _ in range(3)] == [503, 503, None]
    assert [faults.take_key_failure("x", "b") for _ in range(2)] == [403, 403]
    assert "a" not in faults.fail_keys


def test_chance_depends_only_on_seed_subject_and_call_number() -> None:
    def draws(seed: int, order: list[str]) -> dict[str, list[bool]]:
        faults = Faults(seed=seed)
        seen: dict[str, list[bool]] = {}
        for subject in order:
            seen.setdefault(subject, []).append(faults.chance("error", subject, 0.5))
        return seen

    interleaved = draws(1, ["k1", "k2", "k1", "k2", "k1", "k2"] * 5)
    sequential = draws(1, ["k1"] * 15 + ["k2"] * 15)

    assert interleaved == sequential
    assert draws(2, ["k1"] * 15)["k1"] != interleaved["k1"]
    assert 0 < sum(interleaved["k1"]) < 15


def test_clear_returns_to_a_healthy_ctm() -> None:
    faults = Faults(token_lifetime=120)
    faults.latency, faults.error_rate, faults.max_page_size = 0.5, 0.2, 3
    faults.fail_keys["a"] = 503
    faults.fail_next(3)

    faults.clear()

    assert (faults.latency, faults.error_rate) == (0.0, 0.0)
    assert faults.max_page_size is None
    assert faults.fail_keys == {}
    assert faults.take_burst() is None
    assert faults.token_lifetime == 120


def test_clear_also_heals_the_list_refresh_and_answer_modes() -> None:
    # Given every list, refresh and answer mode switched on
    faults = Faults()
    faults.ignore_unknown_filters, faults.wildcard_filters = True, True
    faults.unknown_filters.add("key_name")
    faults.default_sort = "updatedAt"
    faults.ignore_sort, faults.unstable_order = True, True
    faults.accepted_sort_fields = {"createdAt"}
    faults.list_churn = ListChurn(remove=1, add=1)
    faults.gone_keys.add("a")
    faults.not_authorized_keys["a"] = 500
    faults.not_authorized_tenancies["acme-prod"] = 404
    faults.vault_busy("a", times=3)
    faults.trickle_interval, faults.oversize_bytes = 0.1, 1 << 20
    faults.malform(*MALFORMED_MODES)
    # When cleared
    faults.clear()
    # Then none is left
    assert Faults(seed=faults.seed) == faults


def test_a_busy_vault_counts_down_per_key() -> None:
    faults = Faults()
    faults.vault_busy("a", times=2)

    assert [faults.take_vault_busy("b", "a") for _ in range(3)] == [True, True, False]
    assert not faults.take_vault_busy("b")


def test_a_key_is_named_by_any_of_its_names() -> None:
    faults = Faults()
    faults.gone_keys.add("ocid1.key.oc1.iad.x")
    faults.not_authorized_keys["uuid-a"] = 404

    assert faults.is_gone("uuid-a", "ocid1.key.oc1.iad.x")
    assert faults.not_authorized_status("uuid-a", "ocid1.key.oc1.iad.x") == 404
    assert faults.not_authorized_status("uuid-b") is None


def test_a_keys_own_not_authorized_status_comes_before_its_tenancys() -> None:
    faults = Faults()
    faults.not_authorized_tenancies["acme-prod"] = 404
    faults.not_authorized_keys["uuid-a"] = 500

    assert faults.not_authorized_status("uuid-a", tenancy="acme-prod") == 500
    assert faults.not_authorized_status("uuid-b", tenancy="acme-prod") == 404
    assert faults.not_authorized_status("uuid-b", tenancy="acme-dev") is None
