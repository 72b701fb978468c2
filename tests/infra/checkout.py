"""A copy of what a fresh clone of the checkout holds, for tests that run as a reader does."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def clone_files() -> list[str]:
    """The files git knows of (tracked, or new and not ignored), as paths from the checkout:
    what a fresh clone holds, with the files the change at hand adds."""
    listing = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return [name for name in listing if (ROOT / name).is_file()]


def copy_checkout(destination: Path) -> Path:
    """Copy the files git knows of (tracked, or new and not ignored) to ``destination``."""
    for name in clone_files():
        (destination / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, destination / name)
    return destination
