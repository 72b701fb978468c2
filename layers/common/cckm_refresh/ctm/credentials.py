"""The CTM credentials secret (docs/reference.md 3): parsed, validated, never shown; errors
name a field, never a value."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from cckm_refresh.ctm.errors import CtmCredentialsError, CtmSecretUnavailableError, register_secret

# A JWT as CTM issues it: header.payload.signature, each part base64url without padding.
JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"
# Credentials go into a JSON body or a header: control characters there are a corrupted
# secret, and in a header they would make requests echo the value in its error.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

SecretLoader = Callable[[bool], str]
"""Returns the secret string; the argument asks to bypass any cache (after an auth failure)."""


def _refused(reason: str) -> CtmCredentialsError:
    return CtmCredentialsError(reason, error_code="UNAUTHORIZED")


def _json_field(name: str, value: object) -> str | None:
    """The JSON secret's field ``name``, stripped; None when absent or blank."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise _refused(f"the secret's {name} must be a string")
    value = value.strip()
    if value and name != "ca_bundle" and _CONTROL.search(value):
        raise _refused(f"the secret's {name} contains control characters")
    return value or None


class AuthMethod(StrEnum):
    """How the secret authenticates (the names of its fields, not secrets)."""

    REFRESH_TOKEN = "refresh_token"  # noqa: S105
    PASSWORD = "password"  # noqa: S105
    STATIC_TOKEN = "token"  # noqa: S105


@dataclass(frozen=True, repr=False)
class CtmCredentials:
    """What the secret holds: never without a usable method, and ``repr`` shows no value."""

    refresh_token: str | None = None
    username: str | None = None
    password: str | None = None
    token: str | None = None
    domain: str | None = None
    auth_domain: str | None = None
    ca_bundle: str | None = None

    def __post_init__(self) -> None:
        self.method  # noqa: B018 - raises CtmCredentialsError when there is none
        if self.token is not None and not JWT_SHAPE.fullmatch(self.token):
            raise _refused("the secret's token is not a JWT (three dot-separated base64url parts)")
        if self.ca_bundle is not None and _PEM_CERTIFICATE not in self.ca_bundle:
            raise _refused("the secret's ca_bundle is not a PEM certificate")

    @property
    def method(self) -> AuthMethod:
        if self.refresh_token:
            return AuthMethod.REFRESH_TOKEN
        if self.username and self.password:
            return AuthMethod.PASSWORD
        if self.token:
            return AuthMethod.STATIC_TOKEN
        if self.username or self.password:
            missing = "password" if self.username else "username"
            raise _refused(
                f"the secret has no refresh_token or token, and its {missing} is missing"
            )
        raise _refused("the secret holds no refresh_token, username and password, or token")

    def register_secrets(self) -> None:
        for value in (self.refresh_token, self.password, self.token, self.username):
            register_secret(value)

    def __repr__(self) -> str:
        extras = [name for name in ("domain", "auth_domain", "ca_bundle") if getattr(self, name)]
        return f"CtmCredentials(method={self.method.value!r}, with={extras!r})"

    @classmethod
    def parse(cls, secret: str) -> CtmCredentials:
        """Parse a SecretString; CtmCredentialsError names the problem (never a value)."""
        if not isinstance(secret, str) or not secret.strip():
            raise _refused("the secret is empty or not a string")
        text = secret.strip()
        if text.startswith(("{", "[")):
            return cls._from_json(text)
        if _CONTROL.search(text) or " " in text:
            raise _refused("the bare-string secret contains whitespace or control characters")
        return cls(token=text) if JWT_SHAPE.fullmatch(text) else cls(refresh_token=text)

    @classmethod
    def _from_json(cls, text: str) -> CtmCredentials:
        try:
            document = json.loads(text)
        except ValueError:
            # The decoder's message is position-only, but its exception keeps the document.
            raise _refused("the secret looks like JSON but is not valid JSON") from None
        if not isinstance(document, dict):
            raise _refused("the secret is not a JSON object")
        names = (field.name for field in dataclasses.fields(cls))
        return cls(**{name: _json_field(name, document.get(name)) for name in names})


class CredentialsCache:
    """Parsed credentials. The loader owns the cache (at most 5 minutes) and is asked at every
    ``get()``, so a rotated secret is picked up; a string is parsed again only when changed."""

    def __init__(self, loader: SecretLoader) -> None:
        self._loader = loader
        self._parsed: tuple[str, CtmCredentials] | None = None  # replaced whole: no lock

    def get(self, *, force: bool = False) -> CtmCredentials:
        """Current credentials; ``force`` bypasses the loader's cache (after an auth failure)."""
        try:
            raw = self._loader(force)
        except Exception as exc:
            raise _load_failure(exc) from None
        parsed = self._parsed
        if parsed is None or parsed[0] != raw:
            parsed = self._parsed = (raw, CtmCredentials.parse(raw))
        parsed[1].register_secrets()
        return parsed[1]


def _load_failure(exc: Exception) -> CtmCredentialsError | CtmSecretUnavailableError:
    """What the loader's ``exc`` raises: its kind (AccessDenied, throttling...), not its text."""
    response = getattr(exc, "response", None)
    code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
    code = code if isinstance(code, str) and code.isidentifier() else None
    kind = f"{type(exc).__name__} {code}" if code else type(exc).__name__
    message = f"could not load the CTM credentials secret ({kind})"
    if type(exc).__name__ in _NO_AWS_CREDENTIALS or code in _PERMANENT_SECRET_ERRORS:
        return _refused(message)
    return CtmSecretUnavailableError(message, error_code="CONNECTION")


# botocore's own exceptions, named rather than imported: the loader may not be botocore.
_NO_AWS_CREDENTIALS = frozenset({"NoCredentialsError", "PartialCredentialsError"})
_PERMANENT_SECRET_ERRORS = frozenset(
    {
        "AccessDeniedException",
        "ResourceNotFoundException",
        "DecryptionFailure",
        "InvalidRequestException",
        "InvalidParameterException",
    }
)
