"""Deploying and operating with the SAM CLI: samconfig.toml, the README's commands, the
``sam local invoke --env-vars`` file.

No AWS account here: what is checked is what each command will read (samconfig.toml as SAM CLI
resolves it, the stack outputs the README's commands use, the variables the functions read).
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any, TypeVar

import pytest

from cckm_refresh.config import NotifySettings, RefreshSettings
from cckm_refresh.request import parse_request
from devkit.aws_local import LocalAwsStack
from devkit.moto_server import MotoServer
from devkit.template import load_template

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
SAMCONFIG = tomllib.loads((ROOT / "samconfig.toml").read_text(encoding="utf-8"))
ENV_FILE = ROOT / "events" / "env.local.json"
ENVIRONMENTS = ("default", "prod")
# The endpoint `python -m devkit.aws_local` serves on by default, which the env file names.
LOCAL_ENDPOINT = "http://127.0.0.1:5000"
# Shell variables the README's commands use that are the reader's own, not the stack's.
READERS_OWN = {"CUSTODIAN_QUEUE_ARN", "PATH", "PWD", "PYTHONPATH", "HOME"}


def sam_setting(env: str, command: str, key: str) -> Any:
    """A setting as SAM CLI finds it: the command's section first, then ``global``."""
    sections = SAMCONFIG.get(env, {})
    for section in (command, "global"):
        parameters = sections.get(section, {}).get("parameters", {})
        if key in parameters:
            return parameters[key]
    return None


def overrides(env: str, command: str) -> dict[str, str]:
    """``parameter_overrides`` of a command as name -> value (quotes removed)."""
    found = {}
    for entry in sam_setting(env, command, "parameter_overrides") or []:
        name, _, value = entry.partition("=")
        found[name] = shlex.split(value)[0] if value else ""
    return found


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.DOTALL)


def shell_blocks() -> str:
    # Operations' commands sit in an indented list item.
    return "\n".join(textwrap_dedent(block) for block in code_blocks("bash"))


def textwrap_dedent(block: str) -> str:
    return "\n".join(line.strip() for line in block.splitlines())


# --- samconfig.toml ---------------------------------------------------------------------------


@pytest.mark.parametrize("env", ENVIRONMENTS)
@pytest.mark.parametrize(
    "command",
    ["deploy", "sync", "logs", "list_stack_outputs", "remote_invoke", "delete", "local_invoke"],
)
def test_every_command_finds_the_stack_name_and_region(env: str, command: str) -> None:
    assert (
        sam_setting(env, command, "stack_name")
        == f"cckm-oci-refresh-{'dev' if env == 'default' else 'prod'}"
    )
    assert sam_setting(env, command, "region")


@pytest.mark.parametrize("env", ENVIRONMENTS)
@pytest.mark.parametrize("command", ["deploy", "sync", "build", "local_invoke"])
def test_commands_that_take_parameters_get_valid_template_parameters(
    env: str, command: str
) -> None:
    parameters = load_template()["Parameters"]

    given = overrides(env, command)

    assert "CtmBaseUrl" in given
    for name, value in given.items():
        spec = parameters[name]  # every override names a template parameter
        if "AllowedValues" in spec:
            assert value in {str(v) for v in spec["AllowedValues"]}, name
        if "MinValue" in spec:
            assert spec["MinValue"] <= float(value) <= spec["MaxValue"], name
        if "AllowedPattern" in spec:
            assert re.fullmatch(spec["AllowedPattern"], value), name


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_the_stack_name_leaves_room_for_the_generated_fifo_queue_names(env: str) -> None:
    # CloudFormation: <stack>-<logical id>-<13 random characters>, then ".fifo"; SQS allows 80.
    resources = load_template()["Resources"]
    fifo = [
        name
        for name, resource in resources.items()
        if resource["Type"] == "AWS::SQS::Queue" and resource["Properties"].get("FifoQueue")
    ]
    longest = max(
        len(f"{sam_setting(env, 'deploy', 'stack_name')}-{name}-{'X' * 13}.fifo") for name in fifo
    )

    assert fifo
    assert longest <= 80
    assert "38 characters" in README


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_deploy_creates_the_roles_and_resolves_its_bucket(env: str) -> None:
    assert sam_setting(env, "deploy", "capabilities") == "CAPABILITY_IAM"
    assert sam_setting(env, "deploy", "resolve_s3") is True
    assert sam_setting(env, "build", "cached") is True
    assert sam_setting(env, "build", "parallel") is True


def test_prod_keeps_logs_and_results_a_year_and_confirms_its_change_sets() -> None:
    prod = overrides("prod", "deploy")

    assert (prod["LogRetentionDays"], prod["ResultRetentionDays"]) == ("365", "365")
    assert sam_setting("prod", "deploy", "confirm_changeset") is True


def test_local_invoke_uses_the_shipped_env_file_on_the_host_network() -> None:
    assert sam_setting("default", "local_invoke", "env_vars") == "events/env.local.json"
    assert sam_setting("default", "local_invoke", "docker_network") == "host"


# --- the README's commands --------------------------------------------------------------------


def test_every_output_the_readme_reads_exists() -> None:
    outputs = load_template()["Outputs"]
    read = set(re.findall(r"\$\(out (\w+)\)", shell_blocks()))

    assert read >= {"WorkQueueArn", "DeadLetterQueueArn", "RefreshFunctionArn", "SchedulerRoleArn"}
    assert read <= set(outputs)


def test_every_stack_value_the_readme_uses_comes_from_an_output() -> None:
    shell = shell_blocks()
    defined = set(re.findall(r"\b([A-Z][A-Z0-9_]*)=\$\(out \w+\)", shell))
    defined |= {"OUTPUTS"}  # the answer of `sam list stack-outputs` that out() reads
    used = set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", shell))

    assert used - defined - READERS_OWN == set()


def test_the_readme_shows_the_whole_sam_workflow() -> None:
    shell = shell_blocks()
    steps = [
        r"^sam build\b",
        r"^sam deploy --guided\b",
        r"^sam deploy --config-env prod\b",
        r"^sam sync --watch\b",
        r"^sam logs -n RefreshFunction --tail\b",
        r"^sam remote invoke RefreshFunction --event-file events/",
        r"^sam list stack-outputs\b",
    ]

    for step in steps:
        assert re.search(step, shell, re.MULTILINE), step
    assert "sam delete" in README
    assert "needs Docker" in README
    # sam local invoke runs against the local emulators: development, so CONTRIBUTING.md
    contributing = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    assert re.search(r"^sam local invoke RefreshFunction -e events/", contributing, re.M)
    assert "CONTRIBUTING.md#the-emulators" in README


def test_every_event_file_the_readme_names_exists() -> None:
    named = set(re.findall(r"events/[\w.-]+\.json", README))

    assert named
    assert all((ROOT / name).is_file() for name in named), named


def test_the_readme_event_rule_example_matches_the_sample_event_and_sends_a_request() -> None:
    [toml_line] = [b for b in code_blocks("toml") if "EventPattern=" in b]
    pattern = json.loads(toml_line.split("EventPattern='", 1)[1].split("'", 1)[0])
    [put_events] = [b for b in code_blocks("bash") if "put-events" in b]
    [entry] = json.loads(put_events.split("--entries '", 1)[1].rsplit("'", 1)[0])
    sample = json.loads((ROOT / "events" / "eventbridge.json").read_text(encoding="utf-8"))

    assert sample["source"] in pattern["source"]
    assert sample["detail-type"] in pattern["detail-type"]
    assert entry["Source"] in pattern["source"]
    assert entry["DetailType"] in pattern["detail-type"]
    parse_request(json.loads(entry["Detail"]))  # raises unless the detail is a request


# --- the env-vars file for sam local invoke ---------------------------------------------------


Definition = TypeVar("Definition", ast.ClassDef, ast.FunctionDef)


def variables_read(settings: type) -> set[str]:
    """The variable names a settings class's ``from_env`` reads (string literals of its calls)."""
    tree = ast.parse((ROOT / "layers/common/cckm_refresh/config.py").read_text(encoding="utf-8"))
    cls = _the_one(tree.body, ast.ClassDef, settings.__name__)
    from_env = _the_one(cls.body, ast.FunctionDef, "from_env")
    calls = (node for node in ast.walk(from_env) if isinstance(node, ast.Call))
    return set().union(*(_variable_names_passed(call) for call in calls))


def _the_one(nodes: list[ast.stmt], kind: type[Definition], name: str) -> Definition:
    """The one definition of ``kind`` named ``name`` among ``nodes``."""
    [found] = [n for n in nodes if isinstance(n, kind) and n.name == name]
    return found


def _variable_names_passed(call: ast.Call) -> set[str]:
    """The string literals a call is given that look like environment variable names."""
    return {
        arg.value
        for arg in call.args
        if isinstance(arg, ast.Constant)
        and isinstance(arg.value, str)
        and re.fullmatch(r"[A-Z][A-Z0-9_]+", arg.value)
    }


def env_file() -> dict[str, dict[str, str]]:
    loaded: dict[str, dict[str, str]] = json.loads(ENV_FILE.read_text(encoding="utf-8"))
    return loaded


@pytest.mark.parametrize(
    ("function", "settings"),
    [("RefreshFunction", RefreshSettings), ("NotifyFunction", NotifySettings)],
)
def test_the_env_file_names_every_variable_the_function_reads(
    function: str, settings: type
) -> None:
    read = variables_read(settings)

    assert len(read) >= 4
    assert read <= set(env_file()[function])
    assert env_file()[function]["AWS_ENDPOINT_URL"] == LOCAL_ENDPOINT


@pytest.mark.parametrize(
    ("function", "settings"),
    [("RefreshFunction", RefreshSettings), ("NotifyFunction", NotifySettings)],
)
def test_what_sam_local_hands_the_function_passes_its_cold_start_checks(
    function: str, settings: Any
) -> None:
    # SAM CLI sets the variables the template declares (the function's own and Globals'),
    # each overridden by the file when the file names it; a value the template cannot give
    # locally (a Ref to a resource, an intrinsic) must come from the file.
    template = load_template()
    declared = {
        **template["Globals"]["Function"]["Environment"]["Variables"],
        **template["Resources"][function]["Properties"]["Environment"]["Variables"],
    }
    given = env_file()[function]

    unresolvable = {
        name for name, value in declared.items() if isinstance(value, dict) and name not in given
    }
    assert unresolvable <= {"POWERTOOLS_SERVICE_NAME", "POWERTOOLS_LOG_LEVEL"}  # SAM resolves those
    assert set(given) <= set(declared)  # SAM would ignore anything else
    settings.from_env({**{k: str(v) for k, v in declared.items()}, **given})


@pytest.mark.integration
def test_the_env_file_is_what_the_local_stack_command_prints(moto_server: MotoServer) -> None:
    stack = LocalAwsStack.create(moto_server.endpoint_url, prefix="local")

    printed = json.loads(
        json.dumps(stack.sam_env_vars()).replace(stack.endpoint_url, LOCAL_ENDPOINT)
    )

    assert printed == env_file()
