"""The CCKM OCI key operations, named after the CTM API (``docs/reference.md``): sign in, get
a key, refresh it, list keys by OCID or by selector.

Key ids are validated before any URL is built, so ``../../auth/tokens`` never reaches the
network, and list filters are the selector's names only. A 2xx answer that is not the key's
object is ``BAD_RESPONSE``; one flagged ``gone`` is ``NOT_FOUND`` (``GONE``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit

from requests.adapters import BaseAdapter

from cckm_refresh.ctm.auth import LoginInfo, TokenEndpoint, TokenSource
from cckm_refresh.ctm.credentials import CredentialsCache, SecretLoader
from cckm_refresh.ctm.errors import CtmBadResponseError, CtmError, CtmNotFoundError
from cckm_refresh.ctm.listing import MAX_PAGE_SIZE, KeyPage, ListCursor, read_page
from cckm_refresh.ctm.pacing import UNPACED, Pacer
from cckm_refresh.ctm.retries import GONE_ERROR_CODE, GONE_FIELD, RetryPolicy
from cckm_refresh.ctm.transport import CtmResponse, Transport
from cckm_refresh.keyids import require_cckm_id, require_ocid
from cckm_refresh.model import KeyInfo, MalformedKeyObjectError
from cckm_refresh.runtime import SYSTEM, Deadline, Runtime
from cckm_refresh.selectors import SELECTOR_FILTERS

KEYS_PATH = "/api/v1/cckm/oci/keys"
MAX_FILTER_VALUE = 1024
# A key object is a few KB: 1 MiB is generous and keeps 64 refreshes in flight (the most
# REFRESH_CONCURRENCY allows) under 64 MiB of answers.
MAX_KEY_BODY_BYTES = 1 << 20
OCID_PAGE_SIZE = 100

__all__ = ["CtmClient", "CtmResponse", "KeyPage", "ListCursor", "LoginInfo"]


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
        runtime: Runtime = SYSTEM,
        rng: Callable[[], float] = random.random,
        adapter: BaseAdapter | None = None,
    ) -> CtmClient:
        """Wire a client; no I/O: the secret is read and a token obtained at first use."""
        credentials = CredentialsCache(secret_loader)
        transport = Transport(
            timeout=timeout,
            retry=RetryPolicy(max_attempts=max_attempts),
            verify_tls=verify_tls,
            ca_bundle=credentials.ca_bundle,
            pool_size=pool_size,
            runtime=runtime,
            rng=rng,
            adapter=adapter,
        )
        tokens = TokenSource(credentials, TokenEndpoint(base_url, transport), runtime=runtime)
        return cls(base_url, tokens, transport)

    def __repr__(self) -> str:
        return f"CtmClient({self.base_url!r})"

    def __enter__(self) -> CtmClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def last_login(self) -> LoginInfo | None:
        """What CTM said at the last sign-in: the JWT's stated lifetime, the refresh token's."""
        return self.tokens.last_login

    def issue_token(self, deadline: Deadline) -> str:
        """A valid bearer JWT (signing in when needed, before ``deadline``). Never log it."""
        return self.tokens.bearer(deadline).jwt

    def get_oci_key(self, key_id: str, *, deadline: Deadline) -> dict[str, Any]:
        """``GET /api/v1/cckm/oci/keys/{id}``: CCKM's cached copy of the key (no OCI read)."""
        url = self._key_url(key_id)
        answer = self._call("GET", url, UNPACED, deadline, max_body=MAX_KEY_BODY_BYTES)
        return _key_object(answer, "GET", require_cckm_id(key_id)).body

    def refresh_oci_key(self, key_id: str, *, pacer: Pacer, deadline: Deadline) -> CtmResponse:
        """``POST /api/v1/cckm/oci/keys/{id}/refresh`` (no body): CCKM re-reads the key from OCI.

        The updated key object, the status and what it took; or a CtmError carrying
        ``error_code``, ``attempts`` and the last ``http_status``: ``CtmNotFoundError`` (404
        without OCI's words, ``GONE``), ``CtmPermanentError`` (OCI's
        ``NotAuthorizedOrNotFound``, 400, 403...), ``CtmBadResponseError``,
        ``CtmDeadlineError``. Every attempt waits for ``pacer``. Retrying is safe: it reads.
        """
        url = self._key_url(key_id) + "/refresh"
        answer = self._call("POST", url, pacer, deadline, max_body=MAX_KEY_BODY_BYTES)
        return _key_object(answer, "POST refresh", require_cckm_id(key_id))

    def find_oci_key(self, ocid: str, *, deadline: Deadline) -> dict[str, Any] | None:
        """The key object whose OCI key OCID is ``ocid`` (``GET /keys?key_id=``), or None.
        Every key listed is checked: a CTM that ignores the filter is paged through."""
        query = {"key_id": require_ocid(ocid)}
        cursor: ListCursor | None = ListCursor()
        while cursor is not None:
            page = read_page(self._fetch(query, deadline), cursor, OCID_PAGE_SIZE)
            for resource in page.resources:
                params = resource.get("oci_params")
                if isinstance(params, dict) and params.get("key_id") == ocid:
                    return resource
            cursor = page.next
        return None

    def list_page(
        self,
        filters: Mapping[str, str] | None,
        *,
        cursor: ListCursor | None = None,
        page_size: int = 500,
        deadline: Deadline,
    ) -> KeyPage:
        """The next page of ``GET /api/v1/cckm/oci/keys`` matching ``filters`` after ``cursor``
        (see ``listing``): keys CTM answered, unchecked against ``filters`` (CTM may ignore
        one), and malformed items counted. A listing that cannot be read completely raises
        ``CtmListingError``; a page that is not a list answer ``CtmBadResponseError``."""
        query: dict[str, str] = {}
        for name, value in (filters or {}).items():
            if name not in SELECTOR_FILTERS:
                raise ValueError(f"unknown key list filter {name[:64]!r}")
            if not isinstance(value, str) or len(value) > MAX_FILTER_VALUE:
                raise ValueError(
                    f"key list filter {name} must be a string of at most 1024 characters"
                )
            query[name] = value
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}")
        return read_page(self._fetch(query, deadline), cursor or ListCursor(), page_size)

    def close(self) -> None:
        """Release pooled connections and the temporary CA file."""
        self.transport.close()

    def _key_url(self, key_id: str) -> str:
        # require_cckm_id admits only a UUID; quote() is a second lock on the same door.
        return f"{self.base_url}{KEYS_PATH}/{quote(require_cckm_id(key_id), safe='')}"

    def _call(
        self, method: str, url: str, pacer: Pacer, deadline: Deadline, **request: Any
    ) -> CtmResponse:
        return self.transport.call(
            method, url, auth=self.tokens, pacer=pacer, deadline=deadline, **request
        )

    def _fetch(
        self, query: Mapping[str, str], deadline: Deadline
    ) -> Callable[[str | None, int, int], tuple[list[Any], int | None]]:
        def fetch(sort: str | None, skip: int, limit: int) -> tuple[list[Any], int | None]:
            params: dict[str, str | int] = {**query, "skip": skip, "limit": limit}
            if sort is not None:
                params["sort"] = sort
            answer = self._call("GET", self.base_url + KEYS_PATH, UNPACED, deadline, params=params)
            resources, total = answer.body.get("resources"), answer.body.get("total")
            if "resources" not in answer.body or not isinstance(resources, list | None):
                raise _bad(answer, f"GET {KEYS_PATH}", "with no key list")
            return resources or [], total if isinstance(total, int) and not isinstance(
                total, bool
            ) else None

        return fetch


def _key_object(answer: CtmResponse, what: str, key_id: str) -> CtmResponse:
    """``answer`` when it is the key object of ``key_id``; GONE or BAD_RESPONSE otherwise."""
    try:
        info = KeyInfo.from_ctm(answer.body)
    except MalformedKeyObjectError as problem:
        raise _bad(answer, what, f": {problem}") from None
    if info.key_id != key_id:
        raise _bad(answer, what, "with another key's object")
    if answer.body.get(GONE_FIELD) is True:
        raise CtmNotFoundError(
            f"{what} answered HTTP {answer.http_status}: the key is gone from OCI",
            error_code=GONE_ERROR_CODE,
            http_status=answer.http_status,
            attempts=answer.attempts,
        )
    return answer


def _bad(answer: CtmResponse, what: str, problem: str) -> CtmError:
    separator = "" if problem.startswith(":") else " "
    return CtmBadResponseError(
        f"{what} answered HTTP {answer.http_status}{separator}{problem}",
        error_code="BAD_RESPONSE",
        http_status=answer.http_status,
        attempts=answer.attempts,
    )
