"""`pip install .` gives operators the `cckm-refresh` command, without the development tools.

Built from a copy of the checkout (what a fresh clone holds), offline: no dependencies fetched
(the test's own environment has them) and no build isolation (setuptools is pinned in
requirements-dev.txt). A few seconds.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.infra.checkout import copy_checkout

pytestmark = pytest.mark.xdist_group("cli-install")  # one install, checked by one worker
ROOT = Path(__file__).resolve().parents[2]


def _pins(lines: list[str]) -> dict[str, str]:
    pins = {}
    for line in lines:
        requirement = line.split("#")[0].strip()
        if requirement and not requirement.startswith("-"):
            name, version = requirement.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project pip-installed into a directory of its own; returns that directory."""
    work = tmp_path_factory.mktemp("install")
    checkout = copy_checkout(work / "checkout")
    site = work / "site"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-index",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(checkout),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return site


def _cckm_refresh(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed console script, seeing only the installed package (and the test
    environment's dependencies), from outside the checkout."""
    return subprocess.run(
        [str(site / "bin" / "cckm-refresh"), *args],
        cwd=site.parent,
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_pip_install_gives_a_working_cckm_refresh_command(installed: Path) -> None:
    result = _cckm_refresh(installed, "--help")

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: cckm-refresh")
    assert re.search(r"\brefresh\b.*\bresults\b.*\bhistory\b", result.stdout, re.DOTALL)


def test_the_package_is_installed_without_the_development_tools(installed: Path) -> None:
    assert (installed / "cckm_refresh" / "cli" / "__init__.py").exists()
    assert {p.name for p in installed.iterdir()} <= {
        "bin",
        "cckm_refresh",
        "cckm_oci_refresh-0.1.0.dist-info",
    }


def test_the_installed_cli_has_no_development_commands(installed: Path) -> None:
    # The CTM emulator is the clone's (python -m devkit.ctm_emulator), never the CLI's.
    result = _cckm_refresh(installed, "emulator", "--port", "8443")

    assert result.returncode == 2
    assert "invalid choice: 'emulator'" in result.stderr


def test_the_installed_dependencies_are_pinned_as_the_layer_pins_them() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    layer = (ROOT / "layers" / "common" / "requirements.txt").read_text(encoding="utf-8")
    dev = (ROOT / "requirements-dev.txt").read_text(encoding="utf-8")

    declared = _pins(project["dependencies"])

    assert _pins(layer.splitlines()).items() <= declared.items()
    assert {name: declared[name] for name in ("boto3", "botocore")} == {
        name: _pins(dev.splitlines())[name] for name in ("boto3", "botocore")
    }
    assert project["scripts"] == {"cckm-refresh": "cckm_refresh.cli:main"}
