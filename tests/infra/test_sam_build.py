"""`sam build` turns the template into deployable artifacts: the arm64 layer and both functions.

Needs the SAM CLI in .venv-sam and python3.13 on PATH or in pyenv; the handlers are imported
from the build as Lambda would with .venv-lambda (python3.13 with only boto3). `make test` makes
both virtual environments wherever python3.13 is found. Where something is missing the tests
are skipped, saying what (`pytest -rs`), except under CI (``CI`` set), where a build check that
cannot run is a failure. It takes seconds once pip's cache is warm.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest

pytestmark = pytest.mark.xdist_group("sam-build")  # one build, checked by one worker
ROOT = Path(__file__).resolve().parents[2]
SAM = ROOT / ".venv-sam" / "bin" / "sam"
LAMBDA_PYTHON = ROOT / ".venv-lambda" / "bin" / "python"
MEGABYTE = 1024 * 1024
UNCHECKED_HASH = 0b01  # PEP 552 flags: hash-based, source not checked
# What each handler needs at import (values are not used before an invocation).
HANDLER_ENV = {
    "CTM_BASE_URL": "https://ctm.example.com",
    "CTM_SECRET_ID": "arn:aws:secretsmanager:us-east-1:123456789012:secret:ctm",
    "RESULTS_TABLE": "results",
    "TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:notifications",
}


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


def cannot_run(reason: str) -> NoReturn:
    """Skip, saying why; under CI, fail: CI always runs the build checks."""
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the build checks, but this one {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = python313_environment()
    if env is None:
        cannot_run("needs python3.13 (the Lambda runtime) on PATH or in pyenv")
    if not SAM.exists():
        cannot_run("needs the SAM CLI in .venv-sam (make sam; make test makes it)")
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


def test_every_module_the_layer_ships_has_bytecode_used_as_it_is(build_dir: Path) -> None:
    # /opt is read-only on Lambda: a module without a usable .pyc is compiled at every cold
    # start. Deploying changes mtimes, so the .pyc must not be checked against the source.
    site = build_dir / "CommonLayer" / "python"
    modules = list(site.rglob("*.py"))

    missing = [
        str(m.relative_to(site))
        for m in modules
        if not (m.parent / "__pycache__" / f"{m.stem}.cpython-313.pyc").exists()
    ]
    checked = [
        str(pyc.relative_to(site))
        for pyc in site.rglob("*.cpython-313.pyc")
        if int.from_bytes(pyc.read_bytes()[4:8], "little") != UNCHECKED_HASH
    ]
    assert len(modules) > 100
    assert missing == []
    assert checked == []


def test_the_layer_ships_only_what_the_functions_import(build_dir: Path) -> None:
    site = build_dir / "CommonLayer" / "python"
    shipped = {p.name for p in site.iterdir()}

    assert not shipped & {"devkit", "bin", "boto3", "botocore", "tests"}
    assert not (site / "cckm_refresh" / "cli").exists()
    assert not (site / "cckm_refresh" / "__main__.py").exists()
    assert not list(site.rglob("tests"))


@pytest.mark.parametrize("function", ["RefreshFunction", "NotifyFunction"])
def test_each_handler_imports_from_the_build_with_only_the_runtimes_boto3(
    build_dir: Path, function: str, tmp_path: Path
) -> None:
    if not LAMBDA_PYTHON.exists():
        cannot_run("needs .venv-lambda (make lambda-runtime; make test makes it)")
    paths = [str(build_dir / function), str(build_dir / "CommonLayer" / "python")]
    code = f"import sys; sys.path[:0] = {paths!r}; import app; print(app.handler)"

    # -I: no PYTHONPATH, user site or current directory; -B: read-only like /var/task, /opt.
    result = subprocess.run(
        [str(LAMBDA_PYTHON), "-I", "-B", "-c", code],
        cwd=tmp_path,
        env={**os.environ, **HANDLER_ENV},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr[-4000:]
    assert "function handler" in result.stdout
