"""The CTM REST API as the emulator serves it: routing, authentication, faults, answers.

Transport-free: ``CtmApi.handle`` takes an ``ApiRequest`` and returns an ``ApiReply``, so the
behaviour can be unit-tested without sockets; ``server`` puts HTTPS around it.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass, field, replace
from typing import Any

from devkit.ctm_emulator.faults import (
    LIST_ITEM_BAD_OCI_PARAMS,
    LIST_ITEM_WITHOUT_ID,
    LIST_NOT_A_LIST,
    REFRESH_BAD_OCI_PARAMS,
    REFRESH_NOT_A_KEY,
    REFRESH_NOT_JSON,
    Faults,
    TenancyReadWindow,
)
from devkit.ctm_emulator.inventory import (
    FILTERS,
    PAGING_PARAMETERS,
    SORT_FIELDS,
    KeyInventory,
    unsortable_field,
)
from devkit.ctm_emulator.keyset import generate_keys
from devkit.ctm_emulator.request_log import LoggedRequest, RequestLog
from devkit.ctm_emulator.tokens import (
    RefreshTokenLimits,
    TokenAuthority,
    TokenRejectedError,
    jwt_seconds,
)

OCI_THROTTLE_MESSAGE = 'OCI error: {"code":"TooManyRequests","message":"User-rate limit exceeded."}'
OCI_NOT_FOUND_MESSAGE = (
    'OCI error: {"code":"NotAuthorizedOrNotFound","message":"Authorization failed or '
    'requested resource not found."}'
)
OCI_VAULT_BUSY_MESSAGE = (
    'OCI error: {"code":"IncorrectState","message":"Vault must be in one of the following '
    'states: ACTIVE"}'
)
# OCI key-management reads each call makes (a refresh is GetKey + ListKeyVersions).
# OCI reads a call costs. A GET answers from CCKM's cached copy and a refresh re-reads OCI
# (docs/reference.md 9: "GET returns CCKM's cached copy; refresh re-reads OCI").
READ_COST = {"refresh": 2, "get": 0, "list": 0}
DEFAULT_LIMIT = 10

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_TOKENS = re.compile(r"/api/v1/auth/tokens/?")
_KEYS = re.compile(r"/api/v1/cckm/oci/keys/?")
_KEY = re.compile(r"/api/v1/cckm/oci/keys/(?P<id>[^/]+)/?")
_REFRESH = re.compile(r"/api/v1/cckm/oci/keys/(?P<id>[^/]+)/refresh/?")

# status -> (code, codeDesc, message) for answers the emulator is told to give
_ERRORS: dict[int, tuple[int, str, str]] = {
    400: (3, "NCERRInvalidParamValue", "Invalid parameter value."),
    401: (5, "NCERRUnauthorizedAccess", "Unauthorized."),
    403: (6, "NCERRPermissionDenied", "User is not authorized to perform this action."),
    404: (16, "NCERRResourceNotFound: Resource not found", "Resource not found"),
    409: (9, "NCERRConflict", "Conflict with the current state of the key."),
    422: (12, "NCERRUnprocessableEntity", "The request could not be processed."),
    500: (1, "NCERRInternalServerError", "Internal server error."),
    502: (1, "NCERRBadGateway", "OCI error: bad gateway."),
    503: (1, "NCERRServiceUnavailable", "Service unavailable."),
    504: (1, "NCERRGatewayTimeout", "OCI error: the request timed out."),
}


@dataclass(frozen=True)
class ApiRequest:
    """An HTTP request reduced to what the API needs."""

    method: str
    path: str
    query: Mapping[str, str] = field(default_factory=dict)
    authorization: str | None = None
    body: bytes = b""


@dataclass(frozen=True)
class ApiReply:
    """A status and a JSON body, or ``drop``: close the connection without answering.

    ``text`` replaces the JSON body with raw bytes (a proxy's HTML page); ``trickle`` sends
    the body one byte every that many seconds.
    """

    status: int
    body: dict[str, Any] | None = None
    drop: bool = False
    text: bytes | None = None
    trickle: float = 0.0


def ctm_error(status: int, code: int, code_desc: str, message: str) -> ApiReply:
    """An error shaped like CTM's: ``code``, ``codeDesc``, ``message``, ``requestID``."""
    body = {"code": code, "codeDesc": code_desc, "message": message, "requestID": str(uuid.uuid4())}
    return ApiReply(status, body)


def injected_error(status: int) -> ApiReply:
    """The answer for a fault of ``status`` (429 carries OCI's ``TooManyRequests``)."""
    if status == 429:
        return throttled(429)
    default = (1, "NCERRInternalServerError", "Internal server error.")
    if status < 500:
        default = (3, "NCERRInvalidParamValue", "Request failed.")
    return ctm_error(status, *_ERRORS.get(status, default))


def throttled(status: int) -> ApiReply:
    """OCI throttling as CCKM passes it through (HTTP 429, or 500 when CCKM wraps it)."""
    return ctm_error(status, 429, "NCERRTooManyRequests", OCI_THROTTLE_MESSAGE)


def not_found(message: str = "Resource not found") -> ApiReply:
    """CTM's 404."""
    return ctm_error(404, 16, "NCERRResourceNotFound: Resource not found", message)


def oci_not_found(status: int) -> ApiReply:
    """OCI's ``NotAuthorizedOrNotFound`` as CCKM passes it through, under ``status``."""
    code, code_desc, _ = _ERRORS.get(status, (1, "NCERRInternalServerError", ""))
    return ctm_error(status, code, code_desc, OCI_NOT_FOUND_MESSAGE)


def vault_busy() -> ApiReply:
    """OCI refusing while the key's vault is being updated, passed through as a 409."""
    return ctm_error(409, 9, "NCERRConflict", OCI_VAULT_BUSY_MESSAGE)


def unauthorized(message: str) -> ApiReply:
    """CTM's 401."""
    return ctm_error(401, 5, "NCERRUnauthorizedAccess", message)


def bad_request(message: str) -> ApiReply:
    """CTM's 400."""
    return ctm_error(400, 3, "NCERRInvalidParamValue", message)


@dataclass
class _Exchange:
    """The facts of one request gathered for the log as handling goes along."""

    operation: str = ""
    key_id: str | None = None
    tenancy: str | None = None
    grant_type: str | None = None
    authenticated: bool = False


class CtmApi:
    """Answers CTM API requests from the inventory, the token authority and the faults."""

    def __init__(
        self,
        *,
        inventory: KeyInventory,
        tokens: TokenAuthority,
        faults: Faults,
        log: RequestLog,
        clock: Callable[[], float],
        sleep: Callable[[float], None] = time.sleep,
        arrival_clock: Callable[[], float] | None = None,
    ) -> None:
        """``clock`` (epoch seconds) is CTM's time: JWTs, the throttle window, timestamps;
        ``sleep`` is how injected latency waits; ``arrival_clock`` stamps the request log
        (by default ``clock``, so an in-process simulation sees its own virtual time)."""
        self._inventory = inventory
        self._tokens = tokens
        self._faults = faults
        self._log = log
        self._clock = clock
        self._sleep = sleep
        self._arrival_clock = arrival_clock or clock
        self._window = TenancyReadWindow()
        self._churns = 0

    def pause(self, seconds: float) -> None:
        """Wait as injected latency does (the server's trickle uses it between bytes)."""
        self._sleep(seconds)

    def handle(self, request: ApiRequest) -> ApiReply:
        """Answer ``request`` and log it (without its credentials)."""
        arrived = self._arrival_clock()
        exchange = _Exchange()
        reply = self._route(request, exchange)
        body = reply.body or {}
        self._log.record(
            LoggedRequest(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                status=0 if reply.drop else reply.status,
                key_id=exchange.key_id,
                tenancy=exchange.tenancy,
                monotonic=arrived,
                authorization_present=request.authorization is not None,
                authenticated=exchange.authenticated,
                operation=exchange.operation,
                grant_type=exchange.grant_type,
                throttled="TooManyRequests" in str(body.get("message", "")),
                dropped=reply.drop,
                error_code=body.get("codeDesc") if reply.status >= 400 else None,
            )
        )
        return reply

    def reset_throttle(self) -> None:
        """Start every tenancy's read window afresh."""
        self._window.reset()

    # --- routing ---------------------------------------------------------------------------------

    def _route(self, request: ApiRequest, exchange: _Exchange) -> ApiReply:
        method, path = request.method, request.path
        if method == "POST" and _TOKENS.fullmatch(path):
            exchange.operation = "token"
            return self._issue_token(request, exchange)
        if method == "GET" and _KEYS.fullmatch(path):
            exchange.operation = "list"
            exchange.tenancy = request.query.get("tenancy") or None
            return self._authenticated(request, exchange, lambda: self._list(request))
        if method == "GET" and (match := _KEY.fullmatch(path)):
            key_id = match["id"]
            exchange.operation, exchange.key_id = "get", key_id.lower()
            return self._authenticated(request, exchange, lambda: self._get(key_id, exchange))
        if method == "POST" and (match := _REFRESH.fullmatch(path)):
            key_id = match["id"]
            exchange.operation, exchange.key_id = "refresh", key_id.lower()
            return self._authenticated(request, exchange, lambda: self._refresh(key_id, exchange))
        return not_found(f"No route for {method} {path}")

    def _authenticated(
        self, request: ApiRequest, exchange: _Exchange, serve: Callable[[], ApiReply]
    ) -> ApiReply:
        scheme, _, token = (request.authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return unauthorized("Bearer token missing or malformed.")
        try:
            self._tokens.verify_jwt(token.strip(), self._faults.expire_tokens_after_requests)
        except TokenRejectedError as rejected:
            return unauthorized(str(rejected))
        exchange.authenticated = True
        self._log.enter()
        try:
            if self._faults.latency > 0:
                self._sleep(self._faults.latency)
            return serve()
        finally:
            self._log.leave()

    # --- auth ------------------------------------------------------------------------------------

    def _issue_token(self, request: ApiRequest, exchange: _Exchange) -> ApiReply:
        if self._faults.latency_on_auth and self._faults.latency > 0:
            self._sleep(self._faults.latency)
        grant = _parse_grant(request.body)
        if isinstance(grant, ApiReply):
            return grant
        grant_type = grant.get("grant_type", "password")
        exchange.grant_type = grant_type if isinstance(grant_type, str) else None
        granted = self._grant(grant_type, grant)
        if isinstance(granted, ApiReply):
            return granted
        username, refresh_token, refresh_token_id = granted
        lifetime = self._faults.token_lifetime
        jwt = self._tokens.mint_jwt(username, lifetime)
        self._log.token_issued()
        return ApiReply(
            200,
            {
                "jwt": jwt,
                "duration": jwt_seconds(lifetime),
                "token_type": "Bearer",
                "client_id": self._tokens.client_id,
                "refresh_token": refresh_token,
                "refresh_token_expires_in": self._tokens.refresh_token_expires_in(refresh_token),
                "refresh_token_id": refresh_token_id,
            },
        )

    def _grant(
        self, grant_type: object, grant: Mapping[str, Any]
    ) -> tuple[str, str, str] | ApiReply:
        """``(username, refresh token, its id)`` for a good grant, else the error reply."""
        if grant_type == "password":
            username = grant.get("username") or grant.get("name")
            if not username or "password" not in grant:
                return bad_request("username and password are required for grant_type password.")
            if not self._tokens.check_password(username, grant["password"]):
                return unauthorized("Wrong username or password.")
            return (username, *self._tokens.issue_refresh_token(username, _limits(grant)))
        if grant_type == "refresh_token":
            redeemed = self._tokens.redeem_refresh_token(
                grant.get("refresh_token"), renew=grant.get("renew_refresh_token") is True
            )
            return redeemed or unauthorized("Invalid or revoked refresh token.")
        return bad_request("grant_type must be password or refresh_token.")

    # --- keys ------------------------------------------------------------------------------------

    def _list(self, request: ApiRequest) -> ApiReply:
        faults = self._faults
        if faults.chance("drop", "list", faults.drop_rate):
            return ApiReply(0, drop=True)
        if faults.chance("error", "list", faults.error_rate):
            return injected_error(faults.error_status)
        query = self._list_query(request.query)
        if isinstance(query, ApiReply):
            return query
        skip, limit, filters, sort = query
        order = faults.list_order()
        page = self._inventory.list(
            filters,
            skip,
            limit,
            faults.max_page_size,
            sort=sort,
            wildcard=faults.wildcard_filters,
            shuffle=order,
        )
        if faults.list_churn is not None:
            self._churn(filters, sort, order)
        body: dict[str, Any] = {"skip": skip, "limit": limit, "total": page.total}
        if LIST_NOT_A_LIST not in faults.malformed:
            body["resources"] = resources = page.resources
            if resources and LIST_ITEM_WITHOUT_ID in faults.malformed:
                resources[0].pop("id", None)
            if resources and LIST_ITEM_BAD_OCI_PARAMS in faults.malformed:
                resources[-1]["oci_params"] = "ENABLED"
        return self._shaped(ApiReply(200, body))

    def _list_query(
        self, query: Mapping[str, str]
    ) -> tuple[int, int, dict[str, str], str | None] | ApiReply:
        """``(skip, limit, filters, sort)`` of a list request, or the 400 refusing it."""
        faults = self._faults
        paging = _paging(query)
        if isinstance(paging, ApiReply):
            return paging
        skip, limit = paging
        known = (FILTERS - faults.unknown_filters) | PAGING_PARAMETERS
        refusal = self._unknown_parameter(query, known)
        if refusal is not None:
            return refusal
        sort = self._sort(query.get("sort"))
        if isinstance(sort, ApiReply):
            return sort
        filters = {k: v for k, v in query.items() if k in known - PAGING_PARAMETERS and v}
        return skip, limit, filters, sort

    def _sort(self, asked: str | None) -> str | ApiReply | None:
        """The order a list answers in: ``asked``, or ``default_sort`` when nothing is asked or
        the faults ignore ``sort``; the 400 when ``asked`` names a field not accepted."""
        faults = self._faults
        if not asked or faults.ignore_sort:
            return faults.default_sort
        accepted = SORT_FIELDS
        if faults.accepted_sort_fields is not None:
            accepted = SORT_FIELDS & faults.accepted_sort_fields
        refused = unsortable_field(asked, accepted)
        if refused is not None:
            return bad_request(f"Invalid value for sort: cannot sort by {refused[:64]}.")
        return asked

    def _unknown_parameter(self, query: Mapping[str, str], known: Set[str]) -> ApiReply | None:
        """The 400 for a query parameter not in ``known``, unless the faults ignore those."""
        unknown = sorted(name for name in query if name not in known)
        if unknown and not self._faults.ignore_unknown_filters:
            return bad_request(f"Unknown query parameter: {unknown[0][:64]}.")
        return None

    def _churn(self, filters: Mapping[str, str], sort: str | None, order: str | None) -> None:
        """Keys change between page reads, as ``faults.list_churn`` says (the first keys of the
        order just answered go)."""
        churn = self._faults.list_churn
        if churn is None:
            return
        self._churns += 1
        discovered = generate_keys(churn.add, seed=1_000_000 + self._churns) if churn.add else []
        self._inventory.churn(churn.remove, discovered, filters, sort, order)

    def _shaped(self, reply: ApiReply, padded: bool | None = None) -> ApiReply:
        """A key call's answer as the oversize and trickle faults make it (``padded``: whether
        oversize applies; by default unless ``malformed_keys`` targets refreshes only)."""
        faults = self._faults
        body = reply.body
        if padded is None:
            padded = not faults.malformed_keys
        if padded and faults.oversize_bytes and body is not None:
            body = {**body, "padding": "x" * faults.oversize_bytes}
        return replace(reply, body=body, trickle=faults.trickle_interval)

    def _get(self, key_id: str, exchange: _Exchange) -> ApiReply:
        faults = self._faults
        if faults.chance("drop", key_id, faults.drop_rate):
            return ApiReply(0, drop=True)
        if faults.chance("error", key_id, faults.error_rate):
            return injected_error(faults.error_status)
        key = self._inventory.get(key_id) if _UUID.fullmatch(key_id) else None
        if key is None:
            return not_found()
        exchange.tenancy = key["tenancy"]
        if not self._window.admit(
            key["tenancy"], READ_COST["get"], self._clock(), faults.tenancy_read_limit
        ):
            return throttled(faults.throttle_status)
        return self._shaped(ApiReply(200, key))

    def _refresh(self, key_id: str, exchange: _Exchange) -> ApiReply:
        key = self._inventory.get(key_id) if _UUID.fullmatch(key_id) else None
        if key is not None:
            exchange.tenancy = key["tenancy"]
        fault = self._refresh_fault(key_id.lower(), key)
        if fault is not None:
            return fault
        if key is None:
            return not_found()
        faults = self._faults
        names = (key["id"], key["oci_params"]["key_id"])
        refusal = self._oci_refusal(names, key["tenancy"])
        if refusal is not None:
            return refusal
        if not self._window.admit(
            key["tenancy"], READ_COST["refresh"], self._clock(), faults.tenancy_read_limit
        ):
            return throttled(faults.throttle_status)
        refreshed = self._inventory.refresh(key["id"])
        if refreshed is None:
            return not_found()
        if faults.is_gone(*names):
            refreshed["gone"] = True
        return self._refreshed(refreshed, names)

    def _oci_refusal(self, names: tuple[str, ...], tenancy: str) -> ApiReply | None:
        """OCI's answer when it will not show the key or its vault is busy, passed through."""
        status = self._faults.not_authorized_status(*names, tenancy=tenancy)
        if status is not None:
            return oci_not_found(status)
        if self._faults.take_vault_busy(*names):
            return vault_busy()
        return None

    def _refreshed(self, key: dict[str, Any], names: tuple[str, ...]) -> ApiReply:
        """The 200 answer of a refresh, as malformed as ``faults.malformed`` says (for the
        keys ``faults.malformed_keys`` names, when it names any)."""
        badly = self._faults.answers_badly(*names)
        malformed = self._faults.malformed if badly else set()
        if REFRESH_NOT_JSON in malformed:
            return ApiReply(200, text=b"<html><body>Service temporarily unavailable</body></html>")
        if REFRESH_NOT_A_KEY in malformed:
            return self._shaped(ApiReply(200, {"status": "refreshed"}), badly)
        if REFRESH_BAD_OCI_PARAMS in malformed:
            key["oci_params"] = "ENABLED"
        return self._shaped(ApiReply(200, key), badly)

    def _refresh_fault(self, key_id: str, key: Mapping[str, Any] | None) -> ApiReply | None:
        """The injected answer for this refresh call, if a fault claims it (0: drop)."""
        faults = self._faults
        names = (key_id, key["oci_params"]["key_id"]) if key else (key_id,)
        status = faults.take_burst()
        if status is None and (
            faults.is_dropped_key(*names) or faults.chance("drop", key_id, faults.drop_rate)
        ):
            status = 0
        if status is None:
            status = faults.take_key_failure(*names)
        if status is None and faults.chance("error", key_id, faults.error_rate):
            status = faults.error_status
        if status is None:
            return None
        return ApiReply(0, drop=True) if status == 0 else injected_error(status)


def _paging(query: Mapping[str, str]) -> tuple[int, int] | ApiReply:
    """``(skip, limit)`` of a list request, or the 400 refusing them."""
    try:
        skip = int(query.get("skip", "0") or "0")
        limit = int(query.get("limit", str(DEFAULT_LIMIT)) or DEFAULT_LIMIT)
    except ValueError:
        return bad_request("skip and limit must be integers.")
    if skip < 0 or limit < -1:
        return bad_request("skip must be >= 0 and limit >= -1.")
    return skip, limit


def _parse_grant(body: bytes) -> dict[str, Any] | ApiReply:
    """The JSON object of an ``/auth/tokens`` body, or the 400 reply for a bad one."""
    try:
        grant = json.loads(body or b"null")
    except ValueError:
        return bad_request("Request body is not valid JSON.")
    if not isinstance(grant, dict):
        return bad_request("Request body must be a JSON object.")
    problem = _grant_field_problem(grant)
    return grant if problem is None else bad_request(problem)


def _grant_field_problem(grant: Mapping[str, Any]) -> str | None:
    """What CTM says is wrong with the first bad field of a grant; None when none is."""
    for name in ("domain", "auth_domain", "connection", "username", "name", "password"):
        if name in grant and not isinstance(grant[name], str):
            return f"{name} must be a string."
    for name in _LIMIT_FIELDS:
        value = grant.get(name)
        if value is not None and not _whole_minutes(value):
            return f"{name} must be a whole number of minutes."
    return None


def _whole_minutes(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# The refresh token limits a password grant may ask for, in minutes; 0 or absent: none.
_LIMIT_FIELDS = ("refresh_token_lifetime", "refresh_token_revoke_unused_in")


def _limits(grant: Mapping[str, Any]) -> RefreshTokenLimits:
    """The limits a (validated) password grant asks for its refresh token, in seconds."""
    lifetime, unused = (grant.get(name) or 0 for name in _LIMIT_FIELDS)
    return RefreshTokenLimits(
        lifetime=lifetime * 60.0 if lifetime else None,
        revoke_unused_in=unused * 60.0 if unused else None,
    )
