"""The CCKM OCI key operations, named after the CTM API (``reference/ctm-api.md``).

Key ids are validated before any URL is built, so ``../../auth/tokens`` and friends never
reach the network; list filters are restricted to the selector names of CONTRACT 4.1.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit

from cckm_refresh.ctm.auth import TokenEndpoint, TokenSource
from cckm_refresh.ctm.credentials import CredentialsCache, SecretLoader
from cckm_refresh.ctm.errors import CtmPermanentError
from cckm_refresh.ctm.filters import SELECTOR_FILTERS
from cckm_refresh.ctm.ids import require_cckm_id, require_ocid
from cckm_refresh.ctm.pacing import UNPACED, Pacer
from cckm_refresh.ctm.retries import RetryPolicy
from cckm_refresh.ctm.transport import CtmResponse, Transport
from cckm_refresh.observability import logger

KEYS_PATH = "/api/v1/cckm/oci/keys"
MAX_PAGE_SIZE = 1000
MAX_FILTER_VALUE = 1024

__all__ = ["SELECTOR_FILTERS", "CtmClient", "CtmResponse"]


class CtmClient:
    """CCKM OCI key operations over one transport and one token source; thread-safe."""

    def __init__(self, base_url: str, tokens: TokenSource, transport: Transport) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError("CTM base URL must be an https:// URL")
        self.base_url = base_url.rstrip("/")
        self.tokens = tokens
        self.transport = transport

    @classmethod
    def create(
        cls,
        *,
        base_url: str,
        secret_loader: SecretLoader,
        timeout: float = 20.0,
        max_attempts: int = 4,
        verify_tls: bool = True,
        pool_size: int = 8,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        wall_clock: Callable[[], float] = time.time,
    ) -> CtmClient:
        """Wire a client; no I/O: the secret is loaded and a token obtained at first use."""
        credentials = CredentialsCache(secret_loader)
        transport = Transport(
            timeout=timeout,
            retry=RetryPolicy(max_attempts=max_attempts),
            verify_tls=verify_tls,
            ca_bundle=credentials.ca_bundle,
            pool_size=pool_size,
            sleep=sleep,
            rng=rng,
        )
        tokens = TokenSource(
            credentials,
            TokenEndpoint(base_url, transport),
            clock=clock,
            wall_clock=wall_clock,
        )
        return cls(base_url, tokens, transport)

    def __repr__(self) -> str:
        return f"CtmClient({self.base_url!r})"

    def __enter__(self) -> CtmClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def issue_token(self) -> str:
        """A valid bearer JWT (``POST /api/v1/auth/tokens`` when needed). Never log it."""
        return self.tokens.bearer()

    def list_oci_keys(
        self,
        filters: Mapping[str, str] | None = None,
        *,
        key_id: str | None = None,
        page_size: int = 100,
    ) -> Iterator[dict[str, Any]]:
        """Yield every OCI key matching ``filters`` (and the OCID ``key_id``), page by page.

        Pages ``GET /api/v1/cckm/oci/keys`` with ``skip``/``limit`` until ``total``; ``skip``
        advances by the keys actually returned. Arguments are validated before the first call
        (ValueError / InvalidKeyIdError), so a bad selector fails without any request.
        """
        query = _selector_query(filters)
        if key_id is not None:
            query["key_id"] = require_ocid(key_id)
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}")
        return self._pages(query, page_size)

    def get_oci_key(self, key_id: str) -> dict[str, Any]:
        """``GET /api/v1/cckm/oci/keys/{id}``: CCKM's cached copy of the key."""
        return self._call("GET", self._key_url(key_id)).body

    def refresh_oci_key(self, key_id: str, *, pacer: Pacer = UNPACED) -> CtmResponse:
        """``POST /api/v1/cckm/oci/keys/{id}/refresh`` (no body): CCKM re-reads the key from OCI.

        Returns the updated key object with the status and attempts it took; raises a
        CtmError subclass carrying ``error_code``, ``attempts`` and the last ``http_status``.
        Retrying a refresh is safe: it only reads OCI.
        """
        return self._call("POST", self._key_url(key_id) + "/refresh", pacer=pacer)

    def close(self) -> None:
        """Release pooled connections and the temporary CA file."""
        self.transport.close()

    def _key_url(self, key_id: str) -> str:
        # require_cckm_id admits only a UUID; quote() is a second lock on the same door.
        return f"{self.base_url}{KEYS_PATH}/{quote(require_cckm_id(key_id), safe='')}"

    def _call(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str | int] | None = None,
        pacer: Pacer = UNPACED,
    ) -> CtmResponse:
        return self.transport.call(method, url, params=params, auth=self.tokens, pacer=pacer)

    def _pages(self, query: dict[str, str], page_size: int) -> Iterator[dict[str, Any]]:
        url = self.base_url + KEYS_PATH
        skip = 0
        # Keys added or removed while paging shift skip-based pages; never yield one twice.
        seen: set[str] = set()
        while True:
            answer = self._call("GET", url, params={**query, "skip": skip, "limit": page_size})
            resources, total = _page(answer)
            fresh = [r for r in resources if str(r.get("id")) not in seen]
            for resource in fresh:
                seen.add(str(resource.get("id")))
                yield resource
            skip += len(resources)
            if not resources or (total is not None and skip >= total):
                return
            if not fresh:
                # A page of nothing new: the server is not honouring skip. Stop, not loop.
                logger.warning("CTM key list repeated a page; stopping", extra={"skip": skip})
                return


def _selector_query(filters: Mapping[str, str] | None) -> dict[str, str]:
    query: dict[str, str] = {}
    for name, value in (filters or {}).items():
        if name not in SELECTOR_FILTERS:
            raise ValueError(f"unknown key list filter {name[:64]!r}")
        if not isinstance(value, str) or len(value) > MAX_FILTER_VALUE:
            raise ValueError(f"key list filter {name} must be a string of at most 1024 characters")
        query[name] = value
    return query


def _page(answer: CtmResponse) -> tuple[list[dict[str, Any]], int | None]:
    """``(resources, total)`` of a list answer, or a permanent error if it is not one."""
    resources = answer.body.get("resources")
    total = answer.body.get("total")
    if resources is None:
        resources = []
    if not isinstance(resources, list) or not all(isinstance(r, dict) for r in resources):
        raise CtmPermanentError(
            f"GET {KEYS_PATH} answered with a malformed key list",
            error_code=f"HTTP_{answer.http_status}",
            http_status=answer.http_status,
            attempts=answer.attempts,
        )
    if not isinstance(total, int) or isinstance(total, bool):
        total = None
    return resources, total
