"""Fault injection: what can go wrong between a client, CCKM and OCI, switchable at run time.

Tests set plain attributes on ``emulator.faults`` while the server runs. Decisions that involve
chance are drawn from a hash of (seed, kind, subject, n-th call for that subject), not from a
shared random stream, so the same seed gives the same faults however threads interleave.
"""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from dataclasses import dataclass, field

# Ways an answer can be malformed (``Faults.malformed``).
LIST_ITEM_WITHOUT_ID = "list_item_without_id"  # the first key of each list page has no id
LIST_ITEM_BAD_OCI_PARAMS = "list_item_bad_oci_params"  # the last key's oci_params is a string
LIST_NOT_A_LIST = "list_not_a_list"  # the list answers 200 with an object holding no list
REFRESH_NOT_A_KEY = "refresh_not_a_key"  # a refresh answers 200 with an object not a key
REFRESH_BAD_OCI_PARAMS = "refresh_bad_oci_params"  # a refreshed key's oci_params is a string
REFRESH_NOT_JSON = "refresh_not_json"  # a refresh answers 200 with an HTML page
MALFORMED_MODES = frozenset(
    {
        LIST_ITEM_WITHOUT_ID,
        LIST_ITEM_BAD_OCI_PARAMS,
        LIST_NOT_A_LIST,
        REFRESH_NOT_A_KEY,
        REFRESH_BAD_OCI_PARAMS,
        REFRESH_NOT_JSON,
    }
)


@dataclass(frozen=True)
class ListChurn:
    """Keys that change between page reads: after each list answer, CCKM forgets the first
    ``remove`` keys of the list order and discovers ``add`` new ones (created now)."""

    remove: int = 0
    add: int = 0


@dataclass(frozen=True)
class KeyFailure:
    """Answer refreshes of one key with ``status``: ``times`` more times, or always (None)."""

    status: int
    times: int | None = None


@dataclass
class Faults:
    """The switches. All are safe to change while the emulator is serving.

    - ``latency``: seconds added to every list/get/refresh (and to auth when
      ``latency_on_auth``).
    - ``tenancy_read_limit``: OCI key-management reads allowed per second per tenancy
      (a refresh costs 2; a get, served from CCKM's cache, and a list 0); over it CCKM
      answers ``throttle_status`` (429, or 500 when CCKM wraps the OCI error) with
      ``TooManyRequests`` in the body.
    - ``fail_keys``: key id (CCKM id or OCID) -> status, or KeyFailure(status, times), for
      refreshes of that key.
    - ``error_rate`` / ``error_status``: a share of list/get/refresh calls answered with a 5xx.
    - ``drop_rate`` / ``drop_keys``: calls whose connection is closed without an answer.
    - ``token_lifetime``: seconds newly issued JWTs live (CTM: 300).
    - ``expire_tokens_after_requests``: a JWT counts as expired after serving that many calls.
    - ``max_page_size``: list pages hold at most this many keys whatever ``limit`` asked.
    - ``ignore_unknown_filters``: list parameters the emulator does not know are ignored (as
      some CTM versions do) instead of refused with a 400; ``unknown_filters`` names known
      filters to treat as unknown (CTM 2.13 knows ``display_name``, not ``key_name``).
    - ``wildcard_filters``: a ``*`` in a filter value matches any characters.
    - ``default_sort``: the list order when the client sends no ``sort`` (None: creation
      order; ``"updatedAt"``: every refresh moves the key to the end, as CTM can).
    - ``ignore_sort``: ``sort`` is accepted, whatever it names, and ignored: the list answers
      in its own order (``default_sort``'s), not the one asked.
    - ``unstable_order``: every list call draws a new order (from the seed and the call's
      number) before sorting: without ``sort`` the keys come in another order each time,
      with it the ties do.
    - ``accepted_sort_fields``: the fields ``sort`` may name (None: every field the emulator
      can sort by; empty: any ``sort`` is refused); another field is a 400.
    - ``list_churn``: ``ListChurn(remove, add)`` applied after every list answer.
    - ``gone_keys``: refreshes of these keys answer 200 with the key and ``gone: true``.
    - ``not_authorized_keys``: key -> status: refreshes answer that status with OCI's
      ``NotAuthorizedOrNotFound`` passed through.
    - ``not_authorized_tenancies``: tenancy -> status: the same for every key of the tenancy
      (its OCI policy is broken); gets and lists still answer CCKM's cached copies.
    - ``vault_busy_keys``: key -> n: the next n refreshes answer 409 with OCI's "Vault must
      be in one of the following states" (the vault is being updated).
    - ``trickle_interval``: seconds between the bytes of a list/get/refresh answer's body.
    - ``oversize_bytes``: list/get/refresh answers are padded to at least this many bytes.
    - ``malformed``: modes of ``MALFORMED_MODES`` (answers that are not what they should be).
    - ``malformed_keys``: when not empty, the refresh modes of ``malformed`` and
      ``oversize_bytes`` apply to refreshes of these keys only (lists and gets are then never
      padded): one key answered badly in a run of healthy ones.
    """

    seed: int = 0
    latency: float = 0.0
    latency_on_auth: bool = False
    tenancy_read_limit: float | None = None
    throttle_status: int = 429
    fail_keys: dict[str, int | KeyFailure] = field(default_factory=dict)
    error_rate: float = 0.0
    error_status: int = 503
    drop_rate: float = 0.0
    drop_keys: set[str] = field(default_factory=set)
    token_lifetime: float = 300.0
    expire_tokens_after_requests: int | None = None
    max_page_size: int | None = None
    ignore_unknown_filters: bool = False
    unknown_filters: set[str] = field(default_factory=set)
    wildcard_filters: bool = False
    default_sort: str | None = None
    ignore_sort: bool = False
    unstable_order: bool = False
    accepted_sort_fields: set[str] | None = None
    list_churn: ListChurn | None = None
    gone_keys: set[str] = field(default_factory=set)
    not_authorized_keys: dict[str, int] = field(default_factory=dict)
    not_authorized_tenancies: dict[str, int] = field(default_factory=dict)
    vault_busy_keys: dict[str, int] = field(default_factory=dict)
    trickle_interval: float = 0.0
    oversize_bytes: int | None = None
    malformed: set[str] = field(default_factory=set)
    malformed_keys: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )
    _burst: deque[int] = field(default_factory=deque, init=False, repr=False, compare=False)
    _draws: dict[tuple[str, str], int] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def fail_next(self, n: int, status: int = 503) -> None:
        """The next ``n`` refresh calls (any key) answer ``status``; 0 drops the connection.

        Bursts queue up: ``fail_next(2, 503); fail_next(1, 429)`` fails three calls in order.
        """
        with self._lock:
            self._burst.extend([status] * n)

    def drop_next(self, n: int) -> None:
        """The next ``n`` refresh calls have their connection closed without an answer."""
        self.fail_next(n, 0)

    def fail_key(self, key_id: str, status: int = 503, times: int | None = None) -> None:
        """Refreshes of ``key_id`` answer ``status``: ``times`` times, or until cleared."""
        with self._lock:
            self.fail_keys[key_id] = KeyFailure(status, times)

    def malform(self, *modes: str) -> None:
        """Switch on malformed answers (names from ``MALFORMED_MODES``)."""
        unknown = set(modes) - MALFORMED_MODES
        if unknown:
            raise ValueError(f"unknown malformed modes: {sorted(unknown)}")
        with self._lock:
            self.malformed.update(modes)

    def vault_busy(self, key_id: str, times: int = 1) -> None:
        """The next ``times`` refreshes of ``key_id`` find its vault being updated."""
        with self._lock:
            self.vault_busy_keys[key_id] = times

    def take_vault_busy(self, *names: str) -> bool:
        """True (and one fewer left) when ``vault_busy_keys`` claims this refresh."""
        with self._lock:
            for name in names:
                left = self.vault_busy_keys.get(name, 0)
                if left > 0:
                    self.vault_busy_keys[name] = left - 1
                    return True
        return False

    def not_authorized_status(self, *names: str, tenancy: str | None = None) -> int | None:
        """The status ``not_authorized_keys`` (else ``not_authorized_tenancies``) gives a
        refresh of this key, if any."""
        statuses = [self.not_authorized_keys.get(name) for name in names]
        statuses.append(self.not_authorized_tenancies.get(tenancy or ""))
        return next((status for status in statuses if status is not None), None)

    def answers_badly(self, *names: str) -> bool:
        """True when the malformed and oversize faults apply to a refresh of this key."""
        keys = self.malformed_keys
        return not keys or any(name in keys for name in names)

    def is_gone(self, *names: str) -> bool:
        """True when ``gone_keys`` names this key."""
        return any(name in self.gone_keys for name in names)

    def clear(self) -> None:
        """Back to a healthy CTM (the seed and the token lifetime stay)."""
        with self._lock:
            self.latency = 0.0
            self.latency_on_auth = False
            self.tenancy_read_limit = None
            self.throttle_status = 429
            self.fail_keys.clear()
            self.error_rate = 0.0
            self.error_status = 503
            self.drop_rate = 0.0
            self.drop_keys.clear()
            self.expire_tokens_after_requests = None
            self.max_page_size = None
            self.ignore_unknown_filters = False
            self.unknown_filters.clear()
            self.wildcard_filters = False
            self.default_sort = None
            self.ignore_sort = False
            self.unstable_order = False
            self.accepted_sort_fields = None
            self.list_churn = None
            self.gone_keys.clear()
            self.not_authorized_keys.clear()
            self.not_authorized_tenancies.clear()
            self.vault_busy_keys.clear()
            self.trickle_interval = 0.0
            self.oversize_bytes = None
            self.malformed.clear()
            self.malformed_keys.clear()
            self._burst.clear()

    # --- decisions, used by the emulator ------------------------------------------------------

    def take_burst(self) -> int | None:
        """The status owed to this refresh call by ``fail_next``, if any (0 means drop)."""
        with self._lock:
            return self._burst.popleft() if self._burst else None

    def take_key_failure(self, *names: str) -> int | None:
        """The status ``fail_keys`` assigns to a refresh of the key known by ``names``."""
        with self._lock:
            for name in names:
                rule = self.fail_keys.get(name)
                if rule is None:
                    continue
                if isinstance(rule, int):
                    return rule
                if rule.times is None:
                    return rule.status
                if rule.times <= 1:
                    del self.fail_keys[name]
                else:
                    self.fail_keys[name] = KeyFailure(rule.status, rule.times - 1)
                if rule.times >= 1:
                    return rule.status
        return None

    def is_dropped_key(self, *names: str) -> bool:
        """True when ``drop_keys`` names this key."""
        keys = self.drop_keys
        return any(name in keys for name in names)

    def chance(self, kind: str, subject: str, rate: float) -> bool:
        """A deterministic draw: True with probability ``rate`` for this call of ``subject``."""
        draw = self._draw(kind, subject)
        if rate <= 0:
            return False
        digest = hashlib.sha256(draw.encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < rate

    def list_order(self) -> str | None:
        """The seed of this list call's drawn order when ``unstable_order``, else None."""
        draw = self._draw("order", "list")
        return draw if self.unstable_order else None

    def _draw(self, kind: str, subject: str) -> str:
        """``seed|kind|subject|n`` for the n-th draw of ``kind`` for ``subject``."""
        with self._lock:
            n = self._draws.get((kind, subject), 0)
            self._draws[(kind, subject)] = n + 1
        return f"{self.seed}|{kind}|{subject}|{n}"


class TenancyReadWindow:
    """OCI's per-tenancy limit on key-management reads, as a sliding one-second window.

    A throttled call spends nothing (OCI refused it before reading), so a client that backs
    off gets through once the window has moved on.
    """

    WINDOW = 1.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reads: dict[str, deque[tuple[float, int]]] = {}

    def admit(self, tenancy: str, cost: int, now: float, limit: float | None) -> bool:
        """Spend ``cost`` reads of ``tenancy`` at ``now`` if the limit allows; False if not."""
        if limit is None or cost <= 0:
            return True
        with self._lock:
            window = self._reads.setdefault(tenancy, deque())
            while window and window[0][0] <= now - self.WINDOW:
                window.popleft()
            spent = sum(reads for _, reads in window)
            if spent + cost > limit:
                return False
            window.append((now, cost))
            return True

    def reset(self) -> None:
        """Forget every read (a fresh second everywhere)."""
        with self._lock:
            self._reads.clear()
