"""The repository's documents stay true to the code, and every citation finds what it cites.

Code, comments and tests cite the reference by section number, ``docs/reference.md 4.3``;
Markdown documents link to its sections (``docs/reference.md#4.3``) and to each other's
headings. These tests read the files git knows of (tracked, or new and not ignored), as a
fresh clone would hold them.

``test_no_citation_of_the_contract_file_remains`` fails until the old citations ("CONTRACT
4.3": a file a clone does not have) are renamed to the reference; its failure lists each one.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from cckm_refresh.config import ConfigError, NotifySettings, RefreshSettings
from devkit.template import load_template
from tests.infra.checkout import clone_files

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "reference.md"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
README = ROOT / "README.md"
# The documents a reader follows: what they name (make targets, paths) must exist.
GUIDES = ("README.md", "CONTRIBUTING.md", "docs/reference.md", "docs/architecture.md")
# The section numbers of the public contract, which the reference keeps.
CONTRACT_SECTIONS = {"1", "2", "3", "4", "4.1", "4.2", "4.3", "4.4", "5", "6", "7"}
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".json", ".cfg", ".ini", ".sh"}

NUMBER = r"\d+(?:\.\d+)?"
# Between the path and the number: spaces, an optional "§" or "section", or a line break
# (with a comment's "#" when the citation continues a comment).
_GAP = r"(?:[ \t]+|[ \t]*\n[ \t]*#?[ \t]*)"
CITATION = re.compile(
    rf"docs/reference\.md{_GAP}(?:§[ \t]*|section[ \t]+)?"
    rf"({NUMBER}(?:(?:[ \t]*,[ \t]*|[ \t]+and[ \t]+){NUMBER})*)"
)
# The old citations: the word CONTRACT before a section number (or "section" and a number),
# CONTRACT.md, or the word alone in prose; not a name (CONTRACT_DEFAULTS) nor the word quoted
# (a test that a file does not mention it).
OLD_CITATION = re.compile(r"\bCONTRACT\b(?:\.md)?(?:(?:\s+|\s*#\s*)(?:section\s+)?\d+(?:\.\d+)?)?")
SECTION_HEADING = re.compile(rf'^#{{2,3}} <a id="({NUMBER})"></a>({NUMBER})\.? \S', re.MULTILINE)
README_SECTION_CITATION = re.compile(r"\(README(?:\.md)?, ([A-Z][\w ]*?)\)")
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`([^`\n]+)`")


def text_files() -> Iterator[tuple[str, str]]:
    """Every text file of the clone (name, content) that may cite the documents."""
    for name in clone_files():
        path = ROOT / name
        if path.suffix in TEXT_SUFFIXES or path.name == "Makefile":
            yield name, path.read_text(encoding="utf-8", errors="replace")


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def reference_sections() -> set[str]:
    text = REFERENCE.read_text(encoding="utf-8")
    return {anchor for anchor, number in SECTION_HEADING.findall(text) if anchor == number}


# --- the reference's sections -----------------------------------------------------------------


def test_the_reference_keeps_the_contracts_section_numbers() -> None:
    missing = CONTRACT_SECTIONS - reference_sections()

    assert not missing, f"docs/reference.md has no numbered section {sorted(missing)}"


def test_every_numbered_heading_of_the_reference_carries_its_own_anchor() -> None:
    text = REFERENCE.read_text(encoding="utf-8")
    numbered = re.findall(rf"^(#{{2,3}} .*?{NUMBER}\.? .*)$", text, re.MULTILINE)
    headings = [h for h in numbered if re.match(rf"#{{2,3}} (<a id=\"[^\"]*\"></a>)?{NUMBER}", h)]

    wrong = [h for h in headings if not SECTION_HEADING.match(h)]

    assert headings
    assert not wrong, f'numbered headings without a matching <a id="N"></a>: {wrong}'


# --- citations ----------------------------------------------------------------------------------


def citations() -> Iterator[tuple[str, int, str]]:
    """Every section a file cites as ``docs/reference.md N``: (file, line, section)."""
    for name, text in text_files():
        for match in CITATION.finditer(text):
            for number in re.findall(NUMBER, match.group(1)):
                yield name, line_of(text, match.start()), number


def test_every_citation_of_the_reference_names_a_section_it_has() -> None:
    sections = reference_sections()
    cited = list(citations())

    dangling = [f"{name}:{line}: {n}" for name, line, n in cited if n not in sections]

    assert cited
    assert not dangling, "citations of sections docs/reference.md does not have:\n" + "\n".join(
        dangling
    )


def test_no_citation_of_the_contract_file_remains() -> None:
    # Fails until the rename of "CONTRACT x.y" to "docs/reference.md x.y" (CONTRIBUTING.md,
    # Documents): CONTRACT.md is not in the repository, so a reader cannot follow them.
    old = [
        f"{name}:{line_of(text, m.start())}: {' '.join(m.group(0).split())}"
        for name, text in text_files()
        if name != "tests/infra/test_docs.py"
        for m in OLD_CITATION.finditer(text)
        if not _quoted(text, m.start(), m.start() + len("CONTRACT"))
    ]

    assert not old, (
        f"{len(old)} citations of CONTRACT, a file a clone does not have; cite "
        "docs/reference.md instead:\n" + "\n".join(old)
    )


def _quoted(text: str, start: int, end: int) -> bool:
    """Whether ``text[start:end]`` stands between two equal quotes."""
    before, after = text[start - 1 : start], text[end : end + 1]
    return before in {'"', "'"} and after == before


def test_every_readme_section_cited_is_a_heading_of_the_readme() -> None:
    headings = set(re.findall(r"^#{2,3} (.+?)\s*$", README.read_text(encoding="utf-8"), re.M))
    cited = [
        (name, line_of(text, m.start()), m.group(1))
        for name, text in text_files()
        if name != "tests/infra/test_docs.py"
        for m in README_SECTION_CITATION.finditer(text)
    ]

    dangling = [f"{name}:{line}: {where}" for name, line, where in cited if where not in headings]

    assert cited
    assert not dangling, "README sections cited that it does not have:\n" + "\n".join(dangling)


# --- links between documents --------------------------------------------------------------------


def github_anchors(markdown: str) -> set[str]:
    """The fragments a Markdown file answers to on GitHub: its headings' slugs (with -1, -2...
    for repeats) and its explicit ``<a id>`` anchors."""
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', markdown))
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} (.+?)\s*#*\s*$", FENCE.sub("", markdown), re.MULTILINE):
        text = re.sub(r"<[^>]+>", "", heading)
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text).replace("`", "")
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def markdown_links() -> Iterator[tuple[str, int, Path, str | None]]:
    """Every relative link of the Markdown files: (file, line, target, fragment)."""
    for name in clone_files():
        if not name.endswith(".md"):
            continue
        source = ROOT / name
        text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), source.read_text("utf-8"))
        for match in LINK.finditer(text):
            target, _, fragment = match.group(1).partition("#")
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path = (source.parent / target).resolve() if target else source
            yield name, line_of(text, match.start()), path, fragment or None


def test_every_link_between_documents_finds_its_file_and_heading() -> None:
    links = list(markdown_links())
    broken = []
    for name, line, path, fragment in links:
        if not path.exists():
            broken.append(f"{name}:{line}: {path.relative_to(ROOT)} does not exist")
        elif (
            fragment
            and path.suffix == ".md"
            and fragment not in github_anchors(path.read_text(encoding="utf-8"))
        ):
            broken.append(f"{name}:{line}: {path.relative_to(ROOT)} has no #{fragment}")

    assert any(fragment for *_, fragment in links)
    assert not broken, "\n".join(broken)


# --- what the guides name ------------------------------------------------------------------------


def code_of(markdown: str) -> str:
    """The code a Markdown file shows: fenced blocks and inline code spans."""
    return "\n".join([*FENCE.findall(markdown), *CODE_SPAN.findall(FENCE.sub("", markdown))])


def make_help_targets() -> set[str]:
    listing = subprocess.run(
        ["make", "--no-print-directory", "help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(re.findall(r"^\s+make (\S+)", listing, re.MULTILINE))


@pytest.mark.parametrize("document", [*GUIDES, "bench/README.md"])
def test_every_make_target_a_document_names_is_in_make_help(document: str) -> None:
    code = code_of((ROOT / document).read_text(encoding="utf-8"))
    named = {
        target
        for targets in re.findall(r"(?:^|[\s;&|(])make((?:[ \t]+[a-z][a-z0-9-]*)+)", code, re.M)
        for target in targets.split()
    }

    assert named - make_help_targets() == set()


# Paths a document may name without their being in the repository: what the build, the
# Makefile or a reader makes.
MADE_PATHS = re.compile(r"^(\.aws-sam|\.venv[\w-]*|/|~)")
REPOSITORY_PATH = re.compile(
    r"^(?:functions|layers|devkit|events|tests|bench|docs)/[\w./-]*$"
    r"|^(?:template\.yaml|samconfig\.toml|Makefile|pyproject\.toml|requirements-dev\.txt"
    r"|README\.md|CONTRIBUTING\.md|\.ci/run)$"
)


@pytest.mark.parametrize("document", [*GUIDES, "bench/README.md"])
def test_every_repository_path_a_document_names_exists(document: str) -> None:
    spans = CODE_SPAN.findall(FENCE.sub("", (ROOT / document).read_text(encoding="utf-8")))
    named = {
        span.rstrip("/")
        for span in spans
        if REPOSITORY_PATH.match(span) and not MADE_PATHS.match(span) and "<" not in span
    }

    missing = sorted(path for path in named if not (ROOT / path).exists())

    assert not missing, f"{document} names paths the repository does not have: {missing}"


# --- the layout ---------------------------------------------------------------------------------


def layout_entries() -> list[Path]:
    """The files and folders the layout block of docs/architecture.md names, as paths: an entry
    is the path-like words a line starts with (two spaces at most between them); indentation
    nests an entry in the folder above it."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    section = text.split("\n## Layout\n", 1)[1]
    block = FENCE.search(section)
    assert block, "docs/architecture.md: the Layout section has no code block"
    entries: list[Path] = []
    parents: list[tuple[int, Path]] = []
    for line in block.group(0).splitlines()[1:-1]:
        indent = len(line) - len(line.lstrip())
        names = re.match(r"((?:[\w./-]+(?:/|\.py),?(?: {1,2}|$))+)", line.strip())
        if names is None or indent >= 20:  # a description continued
            continue
        while parents and parents[-1][0] >= indent:
            parents.pop()
        base = parents[-1][1] if parents else ROOT
        for name in names.group(1).replace(",", " ").split():
            entries.append(base / name)
            if name.endswith("/"):
                parents.append((indent, base / name))
    return entries


def test_every_entry_of_the_layout_exists() -> None:
    missing = [str(p.relative_to(ROOT)) for p in layout_entries() if not p.exists()]

    assert layout_entries()
    assert not missing, f"docs/architecture.md's layout names what does not exist: {missing}"


def test_the_layout_names_every_module_of_the_package_and_every_top_folder() -> None:
    named = {folder for entry in layout_entries() for folder in (entry, *entry.parents)}
    package = ROOT / "layers/common/cckm_refresh"
    modules = {
        path
        for path in package.iterdir()
        if (path.suffix == ".py" and not path.name.startswith("__"))
        or (path.is_dir() and (path / "__init__.py").exists())
    }
    folders = {
        ROOT / name.split("/", 1)[0]
        for name in clone_files()
        if "/" in name and not name.startswith(".")
    }

    unnamed = sorted(str(p.relative_to(ROOT)) for p in (modules | folders) - named)

    assert not unnamed, f"docs/architecture.md's layout does not say what these are: {unnamed}"


# --- configuration: the reference, config.py and template.yaml agree -----------------------------

REQUIRED = {
    "CTM_BASE_URL": "https://ctm.example.com",
    "CTM_SECRET_ID": "cckm-refresh/ctm",
    "RESULTS_TABLE": "results",
    "TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:notifications",
}
SETTINGS: dict[str, type[RefreshSettings] | type[NotifySettings]] = {
    "refresh": RefreshSettings,
    "notify": NotifySettings,
}
FUNCTIONS = {"refresh": "RefreshFunction", "notify": "NotifyFunction"}


def documented_variables() -> dict[str, tuple[set[str], str]]:
    """Section 2's table: variable -> (the functions that read it, its default as written)."""
    text = REFERENCE.read_text(encoding="utf-8")
    section = text.split('<a id="2"></a>', 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \| (\w+) \|[^|]*\| ([^|]*) \|", section, re.M)
    return {
        name: ({"refresh", "notify"} if read_by == "both" else {read_by}, default.strip())
        for name, read_by, default in rows
    }


class RecordingEnvironment(dict[str, str]):
    """An environment that remembers every variable asked for."""

    def __init__(self, values: Mapping[str, str]) -> None:
        super().__init__(values)
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return super().__getitem__(key)


def variables_read(function: str) -> set[str]:
    env = RecordingEnvironment(REQUIRED)
    SETTINGS[function].from_env(env)
    return env.asked


def test_the_reference_documents_exactly_the_variables_the_functions_read() -> None:
    documented = documented_variables()

    for function in SETTINGS:
        read = variables_read(function)
        said = {name for name, (readers, _) in documented.items() if function in readers}
        assert said == read, f"{function}: documented {sorted(said)}, read {sorted(read)}"


def test_the_documented_defaults_are_the_functions_defaults() -> None:
    for name, (readers, written) in documented_variables().items():
        for function in readers:
            env = {k: v for k, v in REQUIRED.items() if k != name}
            if written == "required":
                with pytest.raises(ConfigError) as refused:
                    SETTINGS[function].from_env(env)
                assert refused.value.variable == name
                continue
            value = getattr(SETTINGS[function].from_env(env), name.lower())
            code = re.fullmatch(r"`([^`]+)`", written)
            if code is None:  # "unset: ..."
                assert written.startswith("unset"), (name, written)
                assert value is None, name
            elif code.group(1) in {"true", "false"}:
                assert value is (code.group(1) == "true"), name
            else:
                assert value == float(code.group(1)), (name, value, written)


def test_the_template_sets_every_documented_variable_on_the_functions_that_read_it() -> None:
    resources = load_template()["Resources"]

    for name, (readers, _) in documented_variables().items():
        for function in readers:
            variables = resources[FUNCTIONS[function]]["Properties"]["Environment"]["Variables"]
            assert name in variables, f"template.yaml: {FUNCTIONS[function]} does not set {name}"


def readme_parameters() -> list[tuple[list[str], str, str]]:
    """The README's parameter table: (parameters, default as written, variable it sets)."""
    text = README.read_text(encoding="utf-8")
    table = text.split("| parameter | default | meaning | sets |", 1)[1].split("\n\n", 1)[0]
    rows = []
    for row in table.strip().splitlines()[1:]:
        cells = [cell.strip() for cell in row.strip("|").split(" | ")]
        rows.append((re.findall(r"`(\w+)`", cells[0]), cells[1], cells[-1].strip("`")))
    return rows


def test_the_readme_lists_every_template_parameter_with_its_default() -> None:
    parameters = load_template()["Parameters"]
    listed = {name: default for names, default, _ in readme_parameters() for name in names}

    assert set(listed) == set(parameters)
    for name, written in listed.items():
        default = parameters[name].get("Default")
        if written == "(required)":
            assert default is None, name
        elif written == "empty":
            assert default == "", name
        else:
            assert written == f"`{default}`", (name, written, default)


def test_each_variable_the_readme_says_a_parameter_sets_is_set_from_it() -> None:
    template = load_template()
    environments = [template["Globals"]["Function"]["Environment"]["Variables"]] + [
        template["Resources"][f]["Properties"]["Environment"]["Variables"]
        for f in FUNCTIONS.values()
    ]

    for names, _, variable in readme_parameters():
        if not variable:
            continue
        values = [json.dumps(env[variable]) for env in environments if variable in env]
        assert values, f"template.yaml sets no {variable}"
        for name in names:
            assert any(f'{{"Ref": "{name}"}}' in v for v in values), (name, variable)
