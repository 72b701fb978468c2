"""``template.yaml`` read as CloudFormation would resolve it, for the local stack, the demo and
the tests: its parameters' defaults, conditions and the intrinsic functions they use, and the
logical ids of the resources recreated locally."""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "template.yaml"
REGION = "us-east-1"

# Logical ids in template.yaml of the resources recreated locally.
TABLE_ID = "ResultsTable"
WORK_QUEUE_ID = "WorkQueue"
DEAD_LETTER_QUEUE_ID = "DeadLetterQueue"
TENANCY_QUEUE_ID = "TenancyQueue"
TENANCY_DEAD_LETTER_QUEUE_ID = "TenancyDeadLetterQueue"
TOPIC_ID = "NotificationTopic"
SECRET_ID = "CtmSecret"
REFRESH_FUNCTION_ID = "RefreshFunction"
NOTIFY_FUNCTION_ID = "NotifyFunction"

# Placeholder for the CTM address until the caller gives the emulator's.
CTM_PLACEHOLDER_URL = "https://ctm.invalid"
# Where the CTM emulator listens by default (python -m devkit.ctm_emulator).
CTM_EMULATOR_URL = "https://127.0.0.1:8443"
# Where ``python -m devkit.aws_local`` serves by default (events/env.local.json names it).
LOCAL_PORT = 5000
LOCAL_PREFIX = "local"


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    """Parse a SAM/CloudFormation template, short tags (``!Ref``, ``!Sub``...) included.

    Each caller gets a copy of its own. A file is parsed once per process and version (YAML in
    pure Python takes 0.1-0.3 s, and every local stack and poller reads the template).
    """
    return copy.deepcopy(_parse(path, path.stat().st_mtime_ns))


@functools.cache
def _parse(path: Path, version: int) -> dict[str, Any]:
    from samtranslator.yaml_helper import yaml_parse  # type: ignore[import-untyped]

    parsed: dict[str, Any] = yaml_parse(path.read_text(encoding="utf-8"))
    return parsed


def parameter_defaults(template: Mapping[str, Any]) -> dict[str, Any]:
    """Every template parameter that has a default, as ``Ref`` returns it (a string or a list)."""
    defaults: dict[str, Any] = {}
    for name, spec in template.get("Parameters", {}).items():
        if "Default" in spec:
            text = str(spec["Default"])
            is_list = spec.get("Type") == "CommaDelimitedList"
            defaults[name] = text.split(",") if is_list else text
    return defaults


class _NoValue:
    """What ``Ref: AWS::NoValue`` resolves to: the property is left out."""


NO_VALUE = _NoValue()


@dataclass(frozen=True)
class Intrinsics:
    """Resolves the intrinsic functions the local resources use, against known values.

    ``refs`` maps parameters and logical ids to what ``Ref`` returns; ``attributes`` maps
    ``"LogicalId.Attribute"`` to what ``Fn::GetAtt`` returns; ``conditions`` are the template's
    condition definitions, for ``Fn::If``. Anything else is an error, so a template change the
    local stack cannot follow is noticed instead of silently ignored.
    """

    refs: Mapping[str, Any]
    attributes: Mapping[str, str]
    conditions: Mapping[str, Any] = field(default_factory=dict)

    def resolve(self, value: Any) -> Any:
        """``value`` with every supported intrinsic function replaced by its value."""
        if isinstance(value, list):
            return [self.resolve(item) for item in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (name, argument), *_ = value.items()
            if name == "Ref" or name.startswith("Fn::"):
                return self._intrinsic(name, argument)
        return {key: self.resolve(item) for key, item in value.items()}

    def holds(self, condition: str) -> bool:
        """Whether the named template condition is true for the known parameter values."""
        return self._truth(self.conditions[condition])

    def _intrinsic(self, name: str, argument: Any) -> Any:
        functions = {
            "Ref": self._ref,
            "Fn::GetAtt": self._get_att,
            "Fn::If": self._if,
            "Fn::Join": self._join,
            "Fn::Sub": self._sub,
        }
        if name not in functions:
            raise ValueError(f"intrinsic {name} is not supported locally")
        return functions[name](argument)

    def _ref(self, argument: Any) -> Any:
        return NO_VALUE if argument == "AWS::NoValue" else self._lookup(self.refs, argument)

    def _get_att(self, argument: Any) -> Any:
        target = argument if isinstance(argument, str) else ".".join(argument)
        return self._lookup(self.attributes, target)

    def _if(self, argument: Any) -> Any:
        condition, when_true, when_false = argument
        return self.resolve(when_true if self.holds(condition) else when_false)

    def _join(self, argument: Any) -> str:
        separator, items = argument
        resolved = self.resolve(items)
        return str(separator).join(str(item) for item in _flat(resolved))

    def _sub(self, argument: Any) -> str:
        if not isinstance(argument, str):  # Fn::Sub's [text, variables] form
            raise ValueError("intrinsic Fn::Sub is not supported locally")
        return self._substitute(argument)

    def _truth(self, expression: Any) -> bool:
        (name, argument), *_ = expression.items()
        if name == "Fn::Equals":
            left, right = (self.resolve(side) for side in argument)
            return bool(left == right)
        if name == "Fn::Not":
            return not self._truth(argument[0])
        if name == "Fn::And":
            return all(self._truth(item) for item in argument)
        if name == "Fn::Or":
            return any(self._truth(item) for item in argument)
        if name == "Condition":
            return self.holds(argument)
        raise ValueError(f"condition function {name} is not supported locally")

    def _substitute(self, text: str) -> str:
        out, rest = [], text
        while "${" in rest:
            head, _, tail = rest.partition("${")
            name, _, rest = tail.partition("}")
            target = self.attributes if "." in name else self.refs
            out += [head, str(self._lookup(target, name))]
        return "".join([*out, rest])

    @staticmethod
    def _lookup(table: Mapping[str, Any], name: str) -> Any:
        if name not in table:
            raise ValueError(f"{name} cannot be resolved locally")
        return table[name]


def _flat(value: Any) -> list[Any]:
    return [item for part in value for item in _flat(part)] if isinstance(value, list) else [value]


# --- the moto server -------------------------------------------------------------------------
