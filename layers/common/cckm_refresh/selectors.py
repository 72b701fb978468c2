"""The CCKM OCI key list filters a selector may use (docs/reference.md 4.1), in one place for the
request validation and the client, and the check that a listed key really matches them.

Imports nothing at run time, so validation stays cheap to load.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing is not imported just to learn that it is not checking
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

# selector filter -> (where it lives in the CCKM key object, field name); see
# docs/reference.md 9 (list filters, key object) and the emulator's inventory.
FILTER_FIELDS: dict[str, tuple[str | None, str]] = {
    "vault_id": (None, "vault_id"),
    "cckm_vault_id": (None, "cckm_vault_id"),
    "tenancy": (None, "tenancy"),
    "region": (None, "region"),
    "compartment_name": (None, "compartment_name"),
    "key_material_origin": (None, "key_material_origin"),
    "vault_name": ("oci_params", "vault_name"),
    "lifecycle_state": ("oci_params", "lifecycle_state"),
    "key_name": ("oci_params", "display_name"),
    "algorithm": ("oci_params", "algorithm"),
    "protection_mode": ("oci_params", "protection_mode"),
}

SELECTOR_FILTERS = frozenset(FILTER_FIELDS)
MAX_VALUE = 256  # a filter value's length, for the request parser and the list call alike


def value_problem(value: object) -> str | None:
    """What is wrong with a selector filter's value (None: nothing): a short line of text."""
    if not isinstance(value, str) or not value.strip():
        return "must be a non-empty string"
    if len(value) > MAX_VALUE or any(ord(c) < 32 for c in value):
        return f"must be at most {MAX_VALUE} printable characters"
    return None


def resource_matches(filters: Mapping[str, str], resource: Mapping[str, Any]) -> bool:
    """True when the CCKM key object satisfies every selector filter exactly (CTM may ignore
    a filter it does not know, or match names by wildcard). A filter outside
    ``SELECTOR_FILTERS`` never matches; no filters match every key (``{"all": true}``)."""
    for name, wanted in filters.items():
        place = FILTER_FIELDS.get(name)
        if place is None:
            return False
        section, field = place
        holder: object = resource if section is None else resource.get(section)
        if not isinstance(holder, dict):
            return False
        actual = holder.get(field)
        if not isinstance(actual, str) or actual != wanted:
            return False
    return True
