"""`sam build` turns the template into deployable artifacts: the arm64 layer and both functions.

Needs the SAM CLI in .venv-sam (`make build` installs it) and python3.13 on PATH or in pyenv;
skipped where either is missing. It takes seconds once pip's cache is warm.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAM = ROOT / ".venv-sam" / "bin" / "sam"
MEGABYTE = 1024 * 1024


def python313_environment() -> dict[str, str] | None:
    """The environment under which python3.13 is on PATH, or None when there is none."""
    env = dict(os.environ)
    if shutil.which("python3.13") and _runs(["python3.13", "--version"], env):
        return env
    if shutil.which("pyenv") is None:
        return None
    versions = subprocess.run(
        ["pyenv", "versions", "--bare"], capture_output=True, text=True, check=False
    ).stdout.split()
    wanted = [v for v in versions if v.startswith("3.13")]
    current = subprocess.run(
        ["pyenv", "version-name"], capture_output=True, text=True, check=False
    ).stdout.strip()
    if not wanted:
        return None
    env["PYENV_VERSION"] = f"{current}:{wanted[0]}" if current else wanted[0]
    return env if _runs(["python3.13", "--version"], env) else None


def _runs(command: list[str], env: dict[str, str]) -> bool:
    return subprocess.run(command, env=env, capture_output=True, check=False).returncode == 0


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = python313_environment()
    if not SAM.exists() or env is None:
        pytest.skip("needs .venv-sam (make build) and python3.13")
    missing = [
        p
        for p in ("functions/refresh/app.py", "functions/notify/app.py")
        if not (ROOT / p).exists()
    ]
    if missing:
        pytest.skip(f"handlers not written yet: {', '.join(missing)}")
    work = tmp_path_factory.mktemp("sam")
    result = subprocess.run(
        [
            str(SAM),
            "build",
            "--template-file",
            str(ROOT / "template.yaml"),
            "--base-dir",
            str(ROOT),
            "--build-dir",
            str(work / "build"),
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return work / "build"


def test_the_layer_holds_the_package_and_one_pinned_powertools(build_dir: Path) -> None:
    site = build_dir / "CommonLayer" / "python"

    assert (site / "cckm_refresh" / "__init__.py").exists()
    assert [p.name for p in site.glob("aws_lambda_powertools-*.dist-info")] == [
        "aws_lambda_powertools-3.37.0.dist-info"
    ]
    assert [p.name for p in site.glob("requests-*.dist-info")] == ["requests-2.34.2.dist-info"]


def test_the_layers_native_code_is_for_python313_on_arm64(build_dir: Path) -> None:
    libraries = list((build_dir / "CommonLayer").rglob("*.so"))

    assert all("cpython-313-aarch64" in library.name for library in libraries)


def test_the_functions_bundle_no_dependencies_of_their_own(build_dir: Path) -> None:
    for function in ("RefreshFunction", "NotifyFunction"):
        assert not list((build_dir / function).glob("aws_lambda_powertools*"))
        assert (build_dir / function / "app.py").exists()


def test_the_layer_stays_small(build_dir: Path) -> None:
    size = sum(p.stat().st_size for p in (build_dir / "CommonLayer").rglob("*") if p.is_file())

    assert size < 20 * MEGABYTE
