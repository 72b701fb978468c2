"""The README's shell commands, run as a reader runs them, so that they stay true.

Every fenced ``bash``/``sh``/``shell`` block of README.md (and an untagged block made only of
``make`` commands, like the two at the top) is one test. Its commands run in order, in one
bash with ``set -euo pipefail``, in a copy of the checkout (the files git knows of, with the
checkout's virtual environments linked in, as a reader has them after ``make venv``/``make
sam``). A command is left out when it cannot run here, for the reason NOT_RUN gives; a block
with nothing left is skipped with those reasons, and ``pytest -rs`` lists them.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.infra.checkout import copy_checkout
from tests.infra.test_sam_build import python313_environment

# One reader's shell, block after block: one pytest-xdist worker, in the README's order.
pytestmark = pytest.mark.xdist_group("readme")
ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SHELL_LANGUAGES = {"bash", "sh", "shell"}
LINKED = (".venv", ".venv-sam", ".venv-lambda")  # made by make, reused rather than remade

# What cannot run here, matched against each command (continuations, quotes and heredocs
# joined). A command left out for needing AWS, Docker, a CTM or the network also leaves out the
# rest of its block, which uses what it would have made.
_AWS = "needs an AWS account"
_AT = r"(^|[|;&(]\s*|\$\(\s*)"  # where a command starts: a line, a pipe, a list, $( ... )
NOT_RUN: list[tuple[str, str]] = [
    (_AT + r"aws\s", f"calls AWS ({_AWS})"),
    (_AT + r"sam (deploy|sync|logs|remote|delete|list)\b", f"acts on a deployed stack ({_AWS})"),
    (_AT + r"sam local\b", "runs the functions in Docker"),
    (r"^make deploy\b", f"deploys ({_AWS})"),
    (
        r"^(cckm-refresh|python3? -m cckm_refresh) (refresh|results|history|doctor)\b",
        f"calls CTM, reads the secret or the results table ({_AWS} and a CTM)",
    ),
    (_AT + r"(ksctl|curl)\b", "talks to a CipherTrust Manager"),
    (r"&\s*$", "starts a server in the background"),
    (
        r"^pip install\b",
        "downloads from the package index (tests/infra/test_cli_install.py installs the same "
        "offline)",
    ),
]
# Left out alone: the rest of the block does not depend on them.
NOT_RUN_ALONE: list[tuple[str, str]] = [
    (r"^make test\b", "is the suite this test is part of"),
    (r"^make bench\b", "takes minutes; benchmarks are run by hand"),
]
NEEDS_PYTHON313 = re.compile(r"^(sam build|make build)\b")
NEEDS_SAM = re.compile(_AT + r"sam\s")
# Run only when make has nothing to do (otherwise they install from the package index).
INSTALLS = re.compile(r"^make (venv|sam|lambda-runtime)\b")


@dataclass(frozen=True)
class Block:
    """One fenced shell block of the README."""

    line: int  # where its fence is, 1-based
    section: str
    commands: tuple[str, ...]

    @property
    def name(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.section.lower()).strip("-")
        return f"{slug}-line{self.line}"


def _complete(text: str) -> bool:
    """Whether a command's text is whole: no open quote, no trailing backslash."""
    if text.rstrip().endswith("\\"):
        return False
    try:
        shlex.split(text)
    except ValueError:  # no closing quotation
        return False
    return True


def _commands(lines: list[str]) -> list[str]:
    """Shell commands: comments and blank lines dropped; continuations, multi-line quotes and
    heredocs joined."""
    commands: list[str] = []
    pending: list[str] = []
    heredoc: str | None = None
    for line in lines:
        if heredoc is not None:
            pending.append(line)
            if line.strip() == heredoc:
                heredoc = None
                commands.append("\n".join(pending))
                pending = []
            continue
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending.append(line)
        marker = re.search(r"(?<!<)<<-?(?!<)\s*['\"]?(\w+)['\"]?", line)
        if marker:
            heredoc = marker.group(1)
        elif _complete("\n".join(pending)):
            commands.append("\n".join(pending))
            pending = []
    if pending:
        commands.append("\n".join(pending))
    return commands


def readme_blocks() -> list[Block]:
    blocks: list[Block] = []
    section = "top"
    fence: tuple[int, str, list[str]] | None = None
    for number, line in enumerate(README.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = line.strip()
        if fence is None:
            if line.startswith("## "):
                section = line[3:]
            elif stripped.startswith("```"):
                fence = (number, stripped[3:].strip().lower(), [])
            continue
        if stripped == "```":
            block = _shell_block(section, *fence)
            if block is not None:
                blocks.append(block)
            fence = None
            continue
        fence[2].append(line)
    return blocks


def _shell_block(section: str, start: int, language: str, body: list[str]) -> Block | None:
    """A fenced block's commands, if it is a shell block (or an unmarked one of make lines)."""
    indent = min((len(b) - len(b.lstrip()) for b in body if b.strip()), default=0)
    commands = _commands([b[indent:] for b in body])
    only_make = bool(commands) and all(c.startswith("make ") for c in commands)
    if language in SHELL_LANGUAGES or (language == "" and only_make):
        return Block(start, section, tuple(commands))
    return None


def why_not_run(command: str, python313: bool, cwd: Path) -> tuple[str, bool] | None:
    """Why a command is left out, and whether the rest of its block goes with it; None: it
    runs."""
    for pattern, reason in NOT_RUN:
        if re.search(pattern, command):
            return reason, True
    for pattern, reason in NOT_RUN_ALONE:
        if re.search(pattern, command):
            return reason, False
    if NEEDS_SAM.search(command) and not _sam_cli(cwd):
        return "needs the SAM CLI (make sam installs it from the package index)", True
    if NEEDS_PYTHON313.search(command) and not python313:
        return "needs python3.13 (the Lambda runtime)", True
    target = INSTALLS.match(command)
    if (
        target
        and subprocess.run(["make", "-q", target.group(1)], cwd=cwd, check=False).returncode != 0
    ):
        return "installs from the package index (.ci/run makes it)", True
    return None


def _sam_cli(cwd: Path) -> bool:
    """Whether the reader has the SAM CLI: ``make sam``'s, or one on PATH."""
    return (cwd / ".venv-sam" / "bin" / "sam").exists() or shutil.which("sam") is not None


@dataclass
class ReaderShell:
    """One reader's shell, from the README's first block to its last: what a block exports
    (PATH, an activated venv) holds for the blocks after it, and a command already run is not
    run again."""

    checkout: Path
    env: dict[str, str]
    python313: bool
    ran: dict[str, int] = field(default_factory=dict)  # command -> README line of its block

    @property
    def state(self) -> Path:
        return self.checkout.parent / "exported.sh"

    def run(self, commands: list[str]) -> subprocess.CompletedProcess[str]:
        script = [
            f"if [ -f {self.state} ]; then source {self.state}; fi",
            "set -euo pipefail",
            *commands,
            f"export -p > {self.state}",
        ]
        return subprocess.run(
            ["bash", "-c", "\n".join(script)],
            cwd=self.checkout,
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )


@pytest.fixture(scope="module")
def shell(tmp_path_factory: pytest.TempPathFactory) -> ReaderShell:
    """A copy of what a clone holds, with the checkout's virtual environments linked in, and
    a reader's environment: no PYTHONPATH (the Makefile sets its own), python3.13 findable."""
    copy = copy_checkout(tmp_path_factory.mktemp("readme") / "checkout")
    for name in LINKED:
        if (ROOT / name).is_dir():
            (copy / name).symlink_to(ROOT / name)
    python313 = python313_environment()
    env = dict(python313 or os.environ)
    env.pop("PYTHONPATH", None)
    return ReaderShell(copy, env, python313 is not None)


def _bare(command: str) -> str:
    return re.sub(r"\s+#.*$", "", command) if "\n" not in command else command


def test_the_readme_has_shell_blocks_to_run() -> None:
    blocks = readme_blocks()

    assert len(blocks) >= 5
    assert any("make demo" in map(_bare, block.commands) for block in blocks)


def plan(block: Block, shell: ReaderShell) -> tuple[list[str], list[str]]:
    """The block's commands that run, and each one left out with why."""
    runnable: list[str] = []
    left_out: list[str] = []
    stopped = False
    for command in block.commands:
        verdict = _why_left_out(command, shell, stopped)
        if verdict is None:
            runnable.append(command)
        else:
            reason, stopped = verdict[0], stopped or verdict[1]
            left_out.append(f"{command.splitlines()[0]!r}: {reason}")
    return runnable, left_out


def _why_left_out(command: str, shell: ReaderShell, stopped: bool) -> tuple[str, bool] | None:
    """Why the command is left out, and whether the rest of its block goes with it (a command
    after one left out, or one the reader's shell already ran); None: it runs."""
    if stopped:
        return "follows a command left out", True
    verdict = why_not_run(command, shell.python313, shell.checkout)
    if verdict is None and _bare(command) in shell.ran:
        return f"ran above (README.md line {shell.ran[_bare(command)]})", False
    return verdict


@pytest.mark.parametrize("block", readme_blocks(), ids=lambda block: block.name)
def test_the_readme_block_runs(block: Block, shell: ReaderShell) -> None:
    runnable, left_out = plan(block, shell)
    if not runnable:
        pytest.skip("nothing runs offline: " + "; ".join(left_out))

    result = shell.run(runnable)

    assert result.returncode == 0, (
        f"README.md line {block.line}: {runnable}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    shell.ran |= {_bare(command): block.line for command in runnable}
