"""CCKM's cached view of OCI keys, and what OCI has done since CCKM last looked.

``GET`` and the list answer the cached objects. ``refresh`` re-reads "OCI": it applies the
pending rotation or state change, or, when the key is gone from OCI, forgets it (404).
"""

from __future__ import annotations

import copy
import datetime as dt
import fnmatch
import random
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Set
from dataclasses import dataclass, replace
from typing import Any

from devkit.ctm_emulator.keyset import iso_micro, new_key_version

# List filters that are top-level fields of the key object ...
TOP_LEVEL_FILTERS = frozenset(
    {
        "id",
        "vault_id",
        "cckm_vault_id",
        "tenancy",
        "region",
        "compartment_name",
        "key_material_origin",
    }
)
# ... and those that live in oci_params (query name -> field name).
OCI_PARAM_FILTERS = {
    "key_id": "key_id",
    "key_name": "display_name",
    "display_name": "display_name",  # CTM 2.13 spelling of key_name
    "vault_name": "vault_name",
    "lifecycle_state": "lifecycle_state",
    "algorithm": "algorithm",
    "protection_mode": "protection_mode",
    "length": "length",
    "curve_id": "curve_id",
}
FILTERS = TOP_LEVEL_FILTERS | frozenset(OCI_PARAM_FILTERS)
# List parameters that are not filters.
PAGING_PARAMETERS = frozenset({"skip", "limit", "sort"})
# Fields the list can be sorted by (``sort=createdAt,id``, ``sort=-updatedAt``).
SORT_FIELDS = frozenset(
    {
        "id",
        "createdAt",
        "updatedAt",
        "refreshed_at",
        "tenancy",
        "region",
        "vault_id",
        "cckm_vault_id",
        "compartment_name",
        "key_material_origin",
        "display_name",
        "key_id",
        "vault_name",
        "lifecycle_state",
        "algorithm",
        "protection_mode",
    }
)


@dataclass(frozen=True)
class PendingOciChange:
    """What OCI knows that CCKM has not seen yet."""

    key_version: str | None = None
    lifecycle_state: str | None = None
    deleted: bool = False


@dataclass(frozen=True)
class Page:
    """One page of the list: the matching total and the keys of this page (copies)."""

    total: int
    resources: list[dict[str, Any]]


class KeyInventory:
    """The keys CCKM holds, thread-safe. Key references may be CCKM ids or OCIDs."""

    def __init__(self, clock: Callable[[], float], seed: int = 0) -> None:
        self._clock = clock
        self._rng = random.Random(f"ctm-emulator-versions-{seed}")
        self._lock = threading.Lock()
        self._keys: dict[str, dict[str, Any]] = {}
        self._by_ocid: dict[str, str] = {}
        self._pending: dict[str, PendingOciChange] = {}

    def add(self, keys: Iterable[Mapping[str, Any]]) -> None:
        """Add key objects (copied); a duplicate id or OCID is a ValueError."""
        with self._lock:
            for key in keys:
                key_id = str(key["id"]).lower()
                ocid = str(key["oci_params"]["key_id"])
                if key_id in self._keys or ocid in self._by_ocid:
                    raise ValueError(f"key already present: {key_id}")
                stored = copy.deepcopy(dict(key))
                stored["id"] = key_id
                self._keys[key_id] = stored
                self._by_ocid[ocid] = key_id

    def snapshot(self) -> list[dict[str, Any]]:
        """Copies of every key, in list order."""
        with self._lock:
            return [copy.deepcopy(key) for key in self._keys.values()]

    def resolve(self, reference: str) -> str:
        """The CCKM id of a key named by CCKM id (any case) or OCID; KeyError if unknown."""
        with self._lock:
            return self._resolve(reference)

    def _resolve(self, reference: str) -> str:
        if reference.lower() in self._keys:
            return reference.lower()
        if reference in self._by_ocid:
            return self._by_ocid[reference]
        raise KeyError(f"no such key: {reference}")

    def get(self, key_id: str) -> dict[str, Any] | None:
        """A copy of the cached key object, or None."""
        with self._lock:
            key = self._keys.get(key_id.lower())
            return copy.deepcopy(key) if key is not None else None

    def list(
        self,
        filters: Mapping[str, str],
        skip: int,
        limit: int,
        max_page: int | None,
        *,
        sort: str | None = None,
        wildcard: bool = False,
        shuffle: str | None = None,
    ) -> Page:
        """Keys matching every filter, in ``sort`` order, ``skip``/``limit`` applied.

        Filters match exactly, or with ``*`` as a wildcard when ``wildcard``. ``sort`` is CTM's
        comma-separated field list (``-field`` descending; fields of the key object or of its
        ``oci_params``); None keeps creation order. ``shuffle`` seeds an order drawn before
        sorting (a CTM whose own order is not stable: ties of ``sort``, or everything when
        there is no ``sort``, come in that order). ``limit`` -1 means all; ``max_page``
        shortens the page further (a server-side cap).
        """
        with self._lock:
            matching = [key for key in self._keys.values() if _matches(key, filters, wildcard)]
            if shuffle is not None:
                random.Random(shuffle).shuffle(matching)
            for field in reversed(_sort_fields(sort)):
                name = field.lstrip("-")
                matching.sort(key=lambda k: _field_text(k, name), reverse=field.startswith("-"))
            end = len(matching) if limit < 0 else skip + limit
            if max_page is not None:
                end = min(end, skip + max(max_page, 0))
            return Page(len(matching), [copy.deepcopy(k) for k in matching[skip:end]])

    def churn(
        self,
        remove: int,
        add: Iterable[Mapping[str, Any]],
        filters: Mapping[str, str],
        sort: str | None,
        shuffle: str | None = None,
    ) -> None:
        """Forget the first ``remove`` keys of the listing ``filters``/``sort``/``shuffle``
        gives, and add ``add`` as keys CCKM just discovered (``createdAt``/``updatedAt`` now,
        after all)."""
        first = (
            self.list(filters, 0, remove, None, sort=sort, shuffle=shuffle).resources
            if remove > 0
            else []
        )
        with self._lock:
            for key in first:
                if key["id"] in self._keys:
                    self._forget(key["id"])
        for discovered in add:
            stamped = copy.deepcopy(dict(discovered))
            with self._lock:
                latest = max((k.get("createdAt", "") for k in self._keys.values()), default="")
            stamped["createdAt"] = stamped["updatedAt"] = self._later_than(latest)
            self.add([stamped])

    def refresh(self, key_id: str) -> dict[str, Any] | None:
        """Re-read the key from OCI; None when it is gone (and then CCKM forgets it too)."""
        with self._lock:
            key = self._keys.get(key_id.lower())
            if key is None:
                return None
            change = self._pending.pop(key["id"], PendingOciChange())
            if change.deleted:
                self._forget(key["id"])
                return None
            params = key["oci_params"]
            if change.key_version is not None:
                params["current_key_version"] = change.key_version
            if change.lifecycle_state is not None:
                params["lifecycle_state"] = change.lifecycle_state
            stamp = self._later_than(key.get("refreshed_at"))
            key["refreshed_at"] = stamp
            key["updatedAt"] = stamp
            return copy.deepcopy(key)

    def rotate(self, reference: str) -> str:
        """OCI makes a new key version; the next refresh shows it. Returns the new version."""
        with self._lock:
            key_id = self._resolve(reference)
            version = new_key_version(self._keys[key_id]["oci_params"]["key_id"], self._rng)
            self._pend(key_id, key_version=version)
            return version

    def set_oci_state(self, reference: str, state: str) -> None:
        """OCI moves the key to ``state`` (``DISABLED``, ``PENDING_DELETION`` ...)."""
        with self._lock:
            self._pend(self._resolve(reference), lifecycle_state=state)

    def delete_in_oci(self, reference: str) -> None:
        """The key is gone from OCI: GET still shows CCKM's copy, the next refresh is a 404."""
        with self._lock:
            self._pend(self._resolve(reference), deleted=True)

    def remove(self, reference: str) -> None:
        """The key is gone from CCKM: list, GET and refresh no longer know it."""
        with self._lock:
            self._forget(self._resolve(reference))

    def _pend(self, key_id: str, **change: Any) -> None:
        self._pending[key_id] = replace(self._pending.get(key_id, PendingOciChange()), **change)

    def _forget(self, key_id: str) -> None:
        key = self._keys.pop(key_id)
        self._by_ocid.pop(key["oci_params"]["key_id"], None)
        self._pending.pop(key_id, None)

    def _later_than(self, previous: object) -> str:
        """Now in CTM's format, strictly after ``previous`` so every refresh is visible."""
        now = dt.datetime.fromtimestamp(self._clock(), dt.UTC)
        if isinstance(previous, str):
            try:
                before = dt.datetime.strptime(previous, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
                    tzinfo=dt.UTC
                )
            except ValueError:
                before = None
            if before is not None and now <= before:
                now = before + dt.timedelta(microseconds=1)
        return iso_micro(now)


def _matches(key: Mapping[str, Any], filters: Mapping[str, str], wildcard: bool = False) -> bool:
    params = key.get("oci_params") or {}
    for name, wanted in filters.items():
        if name in TOP_LEVEL_FILTERS:
            actual = key.get(name)
        elif name in OCI_PARAM_FILTERS:
            actual = params.get(OCI_PARAM_FILTERS[name])
        else:
            continue
        if actual is None:
            return False
        if wildcard and "*" in wanted:
            # Only * is a wildcard (CTM's name=x-*); [ and ? are taken literally.
            pattern = fnmatch.translate(wanted.replace("[", "[[]").replace("?", "[?]"))
            if not re.fullmatch(pattern, str(actual)):
                return False
        elif str(actual) != wanted:
            return False
    return True


def _sort_fields(sort: str | None) -> list[str]:
    return [field.strip() for field in (sort or "").split(",") if field.strip().lstrip("-")]


def unsortable_field(sort: str | None, accepted: Set[str] = SORT_FIELDS) -> str | None:
    """The first field of a ``sort`` parameter not in ``accepted``; None when there is none."""
    names = (field.lstrip("-") for field in _sort_fields(sort))
    return next((name for name in names if name not in accepted), None)


def _field_text(key: Mapping[str, Any], name: str) -> str:
    value = key.get(name)
    if value is None:
        value = (key.get("oci_params") or {}).get(name)
    return "" if value is None else str(value)
