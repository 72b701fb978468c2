"""The CCKM OCI key operations, named after the CTM API (docs/reference.md 9): sign in, get,
refresh, list. Ids are validated before any URL is built; list filters are the selector's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Unpack
from urllib.parse import quote, urlsplit

from cckm_refresh.config import RefreshSettings
from cckm_refresh.ctm.auth import TOKEN_PATH, Grant, TokenSource
from cckm_refresh.ctm.credentials import CredentialsCache, SecretLoader
from cckm_refresh.ctm.errors import CtmNotFoundError, RetryPolicy, bad_response
from cckm_refresh.ctm.listing import MAX_PAGE_SIZE, Fetch, KeyPage, ListCursor, read_page
from cckm_refresh.ctm.transport import (
    UNPACED,
    CtmResponse,
    Pacer,
    Transport,
    TransportOptions,
    TransportWiring,
)
from cckm_refresh.keyids import require_cckm_id, require_ocid
from cckm_refresh.model import KeyInfo, MalformedKeyObjectError
from cckm_refresh.runtime import Deadline
from cckm_refresh.selectors import SELECTOR_FILTERS, value_problem

KEYS_PATH = "/api/v1/cckm/oci/keys"
# A key object is a few KB: 1 MiB is generous and keeps 64 refreshes in flight (the most
# REFRESH_CONCURRENCY allows) under 64 MiB of answers.
MAX_KEY_BODY_BYTES = 1 << 20

__all__ = ["CtmClient", "KeyPage", "ListCursor"]  # what callers import from here


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
        max_attempts: int = 4,
        **transport: Unpack[TransportOptions],
    ) -> CtmClient:
        """Wire a client over a ``Transport(**transport)``; no I/O: the secret is read and a token
        obtained at first use."""
        credentials = CredentialsCache(secret_loader)
        http = Transport(
            retry=RetryPolicy(max_attempts=max_attempts),
            ca_bundle=lambda: credentials.get().ca_bundle,
            **transport,
        )
        token_url = base_url.rstrip("/") + TOKEN_PATH

        def exchange(grant: Grant, deadline: Deadline) -> Mapping[str, Any]:
            return http.call("POST", token_url, json_body=grant, deadline=deadline).body

        return cls(base_url, TokenSource(credentials, exchange, runtime=http.runtime), http)

    @classmethod
    def from_settings(
        cls,
        settings: RefreshSettings,
        secret_loader: SecretLoader,
        **transport: Unpack[TransportWiring],
    ) -> CtmClient:
        """The client the settings describe; ``transport``: ``Transport``'s other arguments."""
        return cls.create(
            base_url=settings.ctm_base_url,
            secret_loader=secret_loader,
            timeout=settings.ctm_timeout_seconds,
            max_attempts=settings.ctm_max_attempts,
            verify_tls=settings.ctm_verify_tls,
            **transport,
        )

    def __enter__(self) -> CtmClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def issue_token(self, deadline: Deadline) -> str:
        """A valid bearer JWT (signing in when needed, before ``deadline``). Never log it."""
        return self.tokens.bearer(deadline).jwt

    def get_oci_key(self, key_id: str, *, deadline: Deadline) -> dict[str, Any]:
        """``GET /api/v1/cckm/oci/keys/{id}``: CCKM's cached copy of the key (no OCI read)."""
        return self._key_call("GET", key_id, "", UNPACED, deadline).body

    def refresh_oci_key(self, key_id: str, *, pacer: Pacer, deadline: Deadline) -> CtmResponse:
        """``POST /api/v1/cckm/oci/keys/{id}/refresh`` (no body, so retrying is safe), every
        attempt paced by ``pacer``: the updated key object, or the CtmError of its outcome."""
        return self._key_call("POST", key_id, "/refresh", pacer, deadline)

    def find_oci_key(self, ocid: str, *, deadline: Deadline) -> dict[str, Any] | None:
        """The key object whose OCID is ``ocid`` (``GET /keys?key_id=``), or None; every key
        listed is checked, as CTM may ignore the filter."""
        fetch = self._fetch({"key_id": require_ocid(ocid)}, deadline)
        cursor: ListCursor | None = ListCursor()
        while cursor is not None:
            page = read_page(fetch, cursor, 100)
            for key in page.resources:  # well-formed: KeyInfo reads them
                if KeyInfo.from_ctm(key).oci_key_id == ocid:
                    return key
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
        """The page of ``GET /api/v1/cckm/oci/keys?<filters>`` after ``cursor`` (``listing``),
        unchecked against ``filters`` (CTM may ignore one); ``CtmListingError`` when the listing
        cannot be read completely."""
        for name, value in (filters or {}).items():
            if name not in SELECTOR_FILTERS:
                raise ValueError(f"unknown key list filter {name[:64]!r}")
            if (problem := value_problem(value)) is not None:
                raise ValueError(f"key list filter {name} {problem}")
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}")
        fetch = self._fetch(dict(filters or {}), deadline)
        return read_page(fetch, cursor or ListCursor(), page_size)

    def close(self) -> None:
        self.transport.close()

    def _key_call(
        self, method: str, key_id: str, action: str, pacer: Pacer, deadline: Deadline
    ) -> CtmResponse:
        """A call on one key: its answer when it is that key's object (``GONE`` when flagged
        gone from OCI), else ``BAD_RESPONSE``."""
        key_id = require_cckm_id(key_id)  # a UUID only; quote() is a second lock on the door
        url = f"{self.base_url}{KEYS_PATH}/{quote(key_id, safe='')}{action}"
        answer = self.transport.call(
            method,
            url,
            auth=self.tokens,
            pacer=pacer,
            deadline=deadline,
            max_body=MAX_KEY_BODY_BYTES,
        )
        what, status = f"{method} {KEYS_PATH}/{{id}}{action}", answer.http_status
        try:
            same = KeyInfo.from_ctm(answer.body).key_id == key_id
            problem = None if same else "another key's object"
        except MalformedKeyObjectError as malformed:
            problem = str(malformed)
        if problem is not None:
            raise bad_response(what, status, problem, answer.attempts)
        if answer.body.get("gone") is True:
            raise CtmNotFoundError(
                f"{what} answered HTTP {status}: the key is gone from OCI",
                error_code="GONE",
                http_status=status,
                attempts=answer.attempts,
            )
        return answer

    def _fetch(self, query: Mapping[str, str], deadline: Deadline) -> Fetch:
        def fetch(sort: str | None, skip: int, limit: int) -> tuple[list[Any], object]:
            params: dict[str, str | int] = {**query, "skip": skip, "limit": limit}
            params |= {"sort": sort} if sort else {}
            answer = self.transport.call(
                "GET", self.base_url + KEYS_PATH, params=params, auth=self.tokens, deadline=deadline
            )
            resources, total = answer.body.get("resources"), answer.body.get("total")
            if "resources" not in answer.body or not isinstance(resources, list | None):
                what, status = f"GET {KEYS_PATH}", answer.http_status
                raise bad_response(what, status, "no key list", answer.attempts)
            return resources or [], total

        return fetch
