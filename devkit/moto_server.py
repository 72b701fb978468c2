"""moto's threaded server on loopback: the local AWS endpoint of the demo, the tests and the
benchmarks (``AWS_ENDPOINT_URL``), with DynamoDB's transaction isolation restored."""

from __future__ import annotations

import logging
import threading
from typing import Any

_MOTO_WRITES = ("put_item", "update_item", "delete_item", "transact_write_items")
_moto_write_lock = threading.RLock()


def isolate_moto_table_writes() -> None:
    """Make moto's DynamoDB writes one at a time, as DynamoDB isolates a transaction from the
    writes around it. moto (5.2) runs TransactWriteItems on a copy of the tables and puts the
    copy back when a condition fails, losing any write another client made in between: two
    containers closing chunks of one run at once would lose counts. Idempotent."""
    from moto.dynamodb.models import DynamoDBBackend

    for name in _MOTO_WRITES:
        write = getattr(DynamoDBBackend, name)
        if getattr(write, "_isolated", False):
            continue

        def isolated(*args: Any, _write: Any = write, **kwargs: Any) -> Any:
            with _moto_write_lock:
                return _write(*args, **kwargs)

        isolated._isolated = True  # type: ignore[attr-defined]
        setattr(DynamoDBBackend, name, isolated)


class MotoServer:
    """moto's threaded server on 127.0.0.1, on an ephemeral port unless ``port`` is given."""

    def __init__(self, port: int = 0) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self._endpoint_url: str | None = None

    def start(self) -> None:
        """Start serving; ``endpoint_url`` is valid afterwards."""
        # werkzeug logs every request line to stderr; keep the demo and test output readable.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        isolate_moto_table_writes()
        self._server.start()
        host, port = self._server.get_host_and_port()
        self._endpoint_url = f"http://{host}:{port}"

    def stop(self) -> None:
        """Stop serving (moto's in-process state is kept)."""
        self._server.stop()

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:<port>``; the value for ``AWS_ENDPOINT_URL``."""
        if self._endpoint_url is None:
            raise RuntimeError("MotoServer.start() has not been called")
        return self._endpoint_url
