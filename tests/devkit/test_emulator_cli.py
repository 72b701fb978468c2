"""The emulator's command line: each switch sets its fault (no server is started)."""

from __future__ import annotations

import dataclasses

import pytest

from devkit.ctm_emulator import Faults
from devkit.ctm_emulator.__main__ import FAULT_SWITCHES, parse_args, set_faults


def faults_for(*argv: str) -> Faults:
    faults = Faults()
    set_faults(faults, parse_args(argv))
    return faults


def test_without_switches_the_faults_are_a_healthy_ctms() -> None:
    assert faults_for() == Faults()


def test_every_switch_names_a_fault() -> None:
    assert set(FAULT_SWITCHES) <= {field.name for field in dataclasses.fields(Faults)}


def test_the_sort_switches_set_the_sort_modes() -> None:
    faults = faults_for(
        "--ignore-sort", "--unstable-order", "--sort-fields", "createdAt, updatedAt"
    )
    assert (faults.ignore_sort, faults.unstable_order) == (True, True)
    assert faults.accepted_sort_fields == {"createdAt", "updatedAt"}
    assert faults_for("--sort-fields", "").accepted_sort_fields == set()


def test_a_sort_field_the_emulator_cannot_sort_by_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--sort-fields", "createdAt,colour"])
    assert "cannot sort by colour" in capsys.readouterr().err


def test_not_authorized_tenancies_take_a_status_or_404() -> None:
    faults = faults_for(
        "--not-authorized-tenancy", "acme-prod", "--not-authorized-tenancy", "acme-dev:500"
    )
    assert faults.not_authorized_tenancies == {"acme-prod": 404, "acme-dev": 500}
