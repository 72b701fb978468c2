"""moto's threaded server on loopback: the local AWS endpoint of the demo, the tests and the
benchmarks (``AWS_ENDPOINT_URL``), with DynamoDB's write isolation and transaction cost
restored (``devkit/moto_dynamodb.py``)."""

from __future__ import annotations

import logging


class MotoServer:
    """moto's threaded server on 127.0.0.1, on an ephemeral port unless ``port`` is given."""

    def __init__(self, port: int = 0) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self._endpoint_url: str | None = None

    def start(self) -> None:
        """Start serving; ``endpoint_url`` is valid afterwards."""
        from devkit.moto_dynamodb import isolate_writes

        # werkzeug logs every request line to stderr; keep the demo and test output readable.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        isolate_writes()
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
