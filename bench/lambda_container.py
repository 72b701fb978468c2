"""One Lambda container in its own process: the real handler, fed events one per stdin line.

The benchmark driver plays the Lambda service (it starts the container with the function's
environment, sends events, deletes handled SQS messages); this process holds nothing but the
handler, so its peak RSS is the function's, and its threads do not share a GIL with the CTM
emulator or moto.

Protocol: after the cold start the process writes one JSON line (``import_seconds``,
``peak_rss_kb``, ``ru_maxrss_kb``); then for each event line it writes one JSON line with the
handler's ``response``, ``wall_seconds``, the AWS calls it made (``aws_calls``) and the same
two memory figures, and ``aws_items`` (the items those calls carried: keys read, items
written, messages sent). ``--timeout=S`` sets the function's timeout (default 300 s, the
template's), which is what the fake context's remaining time counts down from.
Everything else the handler prints goes to stderr.

    python -m bench.lambda_container refresh
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from typing import Any, TextIO

from bench.world import FUNCTION_TIMEOUT, AwsCallCounter, prepare_process


def _peak_rss_kb() -> int:
    """This program's peak resident set (VmHWM), in KiB.

    Not ``ru_maxrss``: Linux carries the high-water mark of the memory the process had before
    ``exec`` into it, so a container started from a large driver would report the driver's.
    """
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # not Linux: best effort


class _Console:
    """Where the handler's prints go: stderr, minus Powertools' metric blobs (EMF lines)."""

    def __init__(self) -> None:
        self._line = ""

    def write(self, text: str) -> int:
        self._line += text
        *lines, self._line = self._line.split("\n")
        for line in lines:
            if not line.startswith('{"_aws"'):
                sys.stderr.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _ru_maxrss_kb() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux


def _say(channel: TextIO, message: dict[str, Any]) -> None:
    channel.write(json.dumps(message) + "\n")
    channel.flush()


def serve(function: str, timeout_seconds: float = FUNCTION_TIMEOUT) -> None:
    """Cold-start ``functions/<function>/app.py`` and invoke it once per stdin line."""
    channel = sys.stdout
    # Powertools binds its log stream at import: keep it off the channel.
    sys.stdout = _Console()
    prepare_process()
    counter = AwsCallCounter.install()
    from devkit.lambda_runtime import FakeLambdaContext, load_handler

    started = time.perf_counter()
    handler = load_handler(function, dict(os.environ))
    _say(
        channel,
        {
            "import_seconds": time.perf_counter() - started,
            "peak_rss_kb": _peak_rss_kb(),
            "ru_maxrss_kb": _ru_maxrss_kb(),
        },
    )
    for line in sys.stdin:
        event = json.loads(line)
        counter.calls.clear()
        counter.items.clear()
        started = time.perf_counter()
        with counter.window():
            response = handler.handler(event, FakeLambdaContext(function, timeout_seconds))
        _say(
            channel,
            {
                "response": response,
                "wall_seconds": time.perf_counter() - started,
                "aws_calls": dict(counter.calls),
                "aws_items": dict(counter.items),
                "peak_rss_kb": _peak_rss_kb(),
                "ru_maxrss_kb": _ru_maxrss_kb(),
            },
        )


if __name__ == "__main__":
    arguments = [a for a in sys.argv[1:] if not a.startswith("--timeout=")]
    timeouts = [float(a.split("=", 1)[1]) for a in sys.argv[1:] if a.startswith("--timeout=")]
    serve(arguments[0] if arguments else "refresh", *timeouts[-1:])
