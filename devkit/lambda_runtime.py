"""Run the real handler modules in-process, the way Lambda would (no Docker needed).

``load_handler`` imports ``functions/<name>/app.py`` afresh with a given environment, which is
a cold start: the module reads and validates its configuration at import. Cold starts in
several threads (one container per concurrent invocation) take turns: each sets ``os.environ``
for its import.
``FakeLambdaContext`` gives the handlers the context attributes Powertools and the deadline
logic read, with a remaining time that can be fixed or driven by a clock.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
_counter = itertools.count()
_cold_starts = threading.Lock()  # an import sets os.environ until it is done: one at a time


class FakeLambdaContext:
    """The attributes of ``LambdaContext`` that our code and Powertools use."""

    def __init__(
        self,
        function_name: str = "refresh",
        timeout_seconds: float = 300.0,
        remaining: Callable[[], float] | None = None,
    ) -> None:
        started = time.monotonic()
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = 256
        self.invoked_function_arn = (
            f"arn:aws:lambda:us-east-1:123456789012:function:{function_name}"
        )
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "local"
        self._remaining = remaining or (lambda: timeout_seconds - (time.monotonic() - started))

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int(self._remaining() * 1000))


@contextmanager
def environment(
    env: Mapping[str, str], cleared: Sequence[str] = (), restore: Sequence[str] = ()
) -> Iterator[None]:
    """Set ``env`` and unset ``cleared`` for the duration of the block; afterwards those and
    the ``restore`` names (variables the block itself may set) are as they were before."""
    saved = {name: os.environ.get(name) for name in [*env, *cleared, *restore]}
    for name in cleared:
        os.environ.pop(name, None)
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def load_handler(name: str, env: Mapping[str, str]) -> ModuleType:
    """Import ``functions/<name>/app.py`` as a fresh module under ``env`` (a cold start)."""
    from aws_lambda_powertools.utilities import parameters

    parameters.clear_caches()
    path = ROOT / "functions" / name / "app.py"
    module_name = f"_{name}_app_{next(_counter)}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    with _cold_starts, environment(env):
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    if name == "refresh":
        # Lambda knows the function's timeout; a local caller may hand an invocation less.
        module.function.timeout_is(function_timeout("RefreshFunction"))
    return module


@functools.cache
def function_timeout(function_id: str) -> float:
    """A function's ``Timeout`` in template.yaml (its own, else the Globals')."""
    from devkit.template import load_template

    template = load_template()
    own = template["Resources"][function_id]["Properties"].get("Timeout")
    return float(own or template["Globals"]["Function"]["Timeout"])


def invoke(module: ModuleType, event: Any, context: FakeLambdaContext | None = None) -> Any:
    """Call the module's ``handler`` as Lambda would."""
    return module.handler(event, context or FakeLambdaContext())
