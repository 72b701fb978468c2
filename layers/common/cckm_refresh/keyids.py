"""Key identifiers accepted by the system, validated before any URL is built.

A CCKM resource id is a UUID (any case, normalised to lower case); an OCI key OCID is
``ocid1.key.`` followed by ``[a-z0-9._-]``. Anything else never reaches the network.
"""

from __future__ import annotations

import re
from enum import Enum

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_OCID = re.compile(r"ocid1\.key\.[a-z0-9._-]+")
MAX_ID_LENGTH = 255


class KeyIdKind(Enum):
    CCKM = "cckm"
    OCID = "ocid"


class InvalidKeyIdError(ValueError):
    """A string that is neither a CCKM resource id nor an OCI key OCID."""

    error_code = "INVALID_KEY_ID"


def classify_key_id(value: object) -> tuple[KeyIdKind, str]:
    """Return the kind and canonical form of ``value``, or raise InvalidKeyIdError."""
    if isinstance(value, str) and len(value) <= MAX_ID_LENGTH:
        if _UUID.fullmatch(value):
            return KeyIdKind.CCKM, value.lower()
        if _OCID.fullmatch(value):
            return KeyIdKind.OCID, value
    raise InvalidKeyIdError("key id must be a CCKM UUID or an OCI key OCID")


def require_cckm_id(value: object) -> str:
    """Return the canonical CCKM id, or raise InvalidKeyIdError (used before building URLs)."""
    kind, canonical = classify_key_id(value)
    if kind is not KeyIdKind.CCKM:
        raise InvalidKeyIdError("a CCKM resource id (UUID) is required here")
    return canonical


def require_ocid(value: object) -> str:
    """Return the OCID unchanged, or raise InvalidKeyIdError."""
    kind, canonical = classify_key_id(value)
    if kind is not KeyIdKind.OCID:
        raise InvalidKeyIdError("an OCI key OCID is required here")
    return canonical


def version_part(version: str) -> str | None:
    """The part of a key-version OCID that tells versions apart: in
    ``ocid1.keyversion.<realm>.<region>.<vault>.<version>.<key>`` the last part names the key and
    is the same in every version of it. None when ``version`` is not such an OCID."""
    parts = version.split(".")
    return parts[-2] if len(parts) >= 7 and parts[1] == "keyversion" else None
