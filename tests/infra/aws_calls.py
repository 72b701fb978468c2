"""The AWS API calls a function's code makes, read from its source (no code is run).

Starting at a handler (``functions/<name>/app.py``), every ``cckm_refresh`` module it imports,
at module level or inside a function, is parsed. In them:

- ``boto3.client("<service>")``, or ``aws_client("<service>")`` (``cckm_refresh.wiring``, whose
  own ``boto3.client(service)`` is the one call not read), names the services the function has
  clients of;
- a call ``<anything>.<method>(keyword=...)`` whose method is the snake_case name of one of
  those services' operations, with keyword arguments only (boto3 client methods take no
  positional ones) that are all members of the operation's input, is a call of that operation;
  ``get_paginator("<method>")`` is one too;
- Powertools helpers that call AWS for the code are listed in ``POWERTOOLS_CALLS``.

Each operation maps to the IAM action that authorises it: its own name under the service's
prefix, except where IAM authorises it by another action (``AUTHORISED_BY``; a DynamoDB
transaction by the actions of its parts, read from the ``Put``/``Update``/``Delete``/
``ConditionCheck`` entries the module builds).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_ROOT = ROOT / "layers" / "common"
PACKAGE = "cckm_refresh"

# The package's one maker of boto3 clients (``cckm_refresh.wiring``).
CLIENT_FACTORY = "aws_client"

# Powertools helpers that make AWS calls on the code's behalf.
POWERTOOLS_CALLS = {
    "get_secret": "secretsmanager:GetSecretValue",
    "get_parameter": "ssm:GetParameter",
}

# Operations IAM authorises by another action (the batch forms by their single action).
AUTHORISED_BY = {
    "sqs:SendMessageBatch": "sqs:SendMessage",
    "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
    "sns:PublishBatch": "sns:Publish",
    "dynamodb:TransactGetItems": "dynamodb:GetItem",
}

# What each kind of entry of a DynamoDB transaction is authorised by.
TRANSACTION_PARTS = {
    "Put": "dynamodb:PutItem",
    "Update": "dynamodb:UpdateItem",
    "Delete": "dynamodb:DeleteItem",
    "ConditionCheck": "dynamodb:ConditionCheckItem",
}


@dataclass
class CodeCalls:
    """What a function's modules call: services with clients, IAM actions, index use."""

    modules: list[Path]
    services: set[str] = field(default_factory=set)
    actions: set[str] = field(default_factory=set)
    uses_index: bool = False
    resources_unread: list[str] = field(default_factory=list)


def module_file(dotted: str) -> Path | None:
    """The source file of a ``cckm_refresh`` module, or None when there is no such module."""
    base = PACKAGE_ROOT.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(tree: ast.AST) -> set[str]:
    """Every ``cckm_refresh`` module an AST imports (its parent packages included)."""
    found = set()
    for name in _imported_names(tree):
        parts = name.split(".")
        if parts[0] == PACKAGE:
            found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return {name for name in found if module_file(name) is not None}


def _imported_names(tree: ast.AST) -> set[str]:
    """Every dotted name an AST imports absolutely: modules, and the names from them."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def module_closure(entry: Path) -> list[Path]:
    """The handler file and every package module it reaches through imports."""
    seen: dict[Path, None] = {entry: None}
    pending = [entry]
    while pending:
        tree = ast.parse(pending.pop().read_text(encoding="utf-8"))
        for name in sorted(imported_modules(tree)):
            path = module_file(name)
            if path is not None and path not in seen:
                seen[path] = None
                pending.append(path)
    return list(seen)


@cache
def _operations(service: str) -> tuple[str, dict[str, tuple[str, frozenset[str]]]]:
    """A service's IAM prefix and its operations by boto3 method name (with input members)."""
    import botocore.session
    from botocore import xform_name

    model = botocore.session.get_session().get_service_model(service)
    operations = {}
    for name in model.operation_names:
        shape = model.operation_model(name).input_shape
        members = frozenset(shape.members) if shape is not None else frozenset()
        operations[xform_name(name)] = (name, members)
    return model.signing_name, operations


def _string(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _boto3_clients(tree: ast.AST, kind: str) -> list[str]:
    """The service of each ``boto3.<kind>(...)`` call (and, for clients, each call of the
    client factory) outside the factory itself."""
    inside_factory = _nodes_inside_factory(tree)
    services = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and id(node) not in inside_factory
            and _makes_a_client(node, kind)
        ):
            service = _string(node.args[0]) if node.args else None
            services.append(service or "<not a literal>")
    return services


def _nodes_inside_factory(tree: ast.AST) -> set[int]:
    """The ids of the nodes of the client factory's definition, if the AST has it."""
    return {
        id(node)
        for function in ast.walk(tree)
        if isinstance(function, ast.FunctionDef) and function.name == CLIENT_FACTORY
        for node in ast.walk(function)
    }


def _makes_a_client(call: ast.Call, kind: str) -> bool:
    """Whether the call is ``boto3.<kind>(...)``, or, for clients, the client factory's."""
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr == kind and isinstance(func.value, ast.Name) and func.value.id == "boto3"
    return kind == "client" and isinstance(func, ast.Name) and func.id == CLIENT_FACTORY


def _operation_of(call: ast.Call, services: Iterable[str]) -> list[tuple[str, str]]:
    """The (IAM prefix, operation) pairs a call may be; empty when it is no client call."""
    func = call.func
    if not isinstance(func, ast.Attribute):
        return []
    method, call = _method_called(call, func)
    if call.args:
        return []
    named = {keyword.arg for keyword in call.keywords if keyword.arg is not None}
    found = []
    for service in services:
        prefix, operations = _operations(service)
        if method in operations and named <= operations[method][1]:
            found.append((prefix, operations[method][0]))
    return found


def _method_called(call: ast.Call, func: ast.Attribute) -> tuple[str, ast.Call]:
    """The client method a call stands for, and the call that passes its arguments: for
    ``get_paginator("<method>")``, that method, with the arguments paginate() will pass."""
    if func.attr == "get_paginator" and call.args and _string(call.args[0]):
        return str(_string(call.args[0])), ast.Call(func=func, args=[], keywords=[])
    return func.attr, call


def _transaction_parts(tree: ast.AST) -> set[str]:
    parts = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key in node.keys:
                name = _string(key) if key is not None else None
                if name in TRANSACTION_PARTS:
                    parts.add(TRANSACTION_PARTS[name])
    return parts


def _uses_index(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "IndexName":
            return True
        if _string(node) == "IndexName":
            return True
    return False


def calls_of(entry: Path) -> CodeCalls:
    """The AWS calls the handler at ``entry`` and the package modules it imports make."""
    modules = module_closure(entry)
    trees: dict[Path, Any] = {path: ast.parse(path.read_text(encoding="utf-8")) for path in modules}
    found = CodeCalls(modules=modules)
    for path, tree in trees.items():
        found.services |= set(_boto3_clients(tree, "client"))
        found.resources_unread += [
            f"{path}: boto3.resource({s!r})" for s in _boto3_clients(tree, "resource")
        ]
    services = sorted(found.services)
    for path, tree in trees.items():
        for node in (node for node in ast.walk(tree) if isinstance(node, ast.Call)):
            found.actions |= _actions_of(node, services, path, tree)
        found.uses_index |= _uses_index(tree)
    return found


def _actions_of(call: ast.Call, services: list[str], path: Path, tree: ast.AST) -> set[str]:
    """The IAM actions one call needs: a Powertools helper's, or those authorising the client
    operation it is (a transaction's by its parts, read from ``tree``)."""
    name = call.func.attr if isinstance(call.func, ast.Attribute) else None
    if isinstance(call.func, ast.Name):
        name = call.func.id
    if name in POWERTOOLS_CALLS:
        return {POWERTOOLS_CALLS[name]}
    candidates = _operation_of(call, services)
    if len(candidates) > 1:
        raise ValueError(f"{path}:{call.lineno}: {name}() could be any of {candidates}")
    actions = set()
    for prefix, operation in candidates:
        action = f"{prefix}:{operation}"
        if action == "dynamodb:TransactWriteItems":
            parts = _transaction_parts(tree)
            if not parts:
                raise ValueError(f"{path}:{call.lineno}: a transaction of unknown parts")
            actions |= parts
        else:
            actions.add(AUTHORISED_BY.get(action, action))
    return actions
