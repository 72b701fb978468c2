"""The CTM credentials secret (CONTRACT section 3): parsed, validated, and never shown.

The secret string is a JSON object or a bare string. Exactly one way to authenticate is used,
in this order: ``refresh_token``, then ``username`` + ``password``, then ``token``. Error
messages name the field that is wrong, never a value from the secret.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from cckm_refresh.ctm.errors import (
    CtmCredentialsError,
    CtmSecretUnavailableError,
    register_secret,
)

# A JWT as CTM issues it: header.payload.signature, each part base64url without padding.
JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_FIELDS = ("refresh_token", "username", "password", "token", "domain", "auth_domain", "ca_bundle")
_PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"
# Credentials end up in a JSON body or an HTTP header: control characters there are a
# corrupted secret, and in a header they would make requests echo the value in its error.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

SecretLoader = Callable[[bool], str]
"""Returns the secret string; the argument asks to bypass any cache (after an auth failure)."""


class AuthMethod(StrEnum):
    """The way the secret authenticates (the names of its fields, not secrets)."""

    REFRESH_TOKEN = "refresh_token"  # noqa: S105
    PASSWORD = "password"  # noqa: S105
    STATIC_TOKEN = "token"  # noqa: S105


@dataclass(frozen=True, repr=False)
class CtmCredentials:
    """What the secret holds. ``repr`` shows which method is used, never a value."""

    refresh_token: str | None = None
    username: str | None = None
    password: str | None = None
    token: str | None = None
    domain: str | None = None
    auth_domain: str | None = None
    ca_bundle: str | None = None

    def __post_init__(self) -> None:
        # Validating here means no CtmCredentials without a usable method can exist.
        self.method  # noqa: B018 - raises CtmCredentialsError when there is none
        if self.token is not None and not JWT_SHAPE.fullmatch(self.token):
            raise CtmCredentialsError(
                "the secret's token is not a JWT (three dot-separated base64url parts)",
                error_code="UNAUTHORIZED",
            )
        if self.ca_bundle is not None and _PEM_CERTIFICATE not in self.ca_bundle:
            raise CtmCredentialsError(
                "the secret's ca_bundle is not a PEM certificate", error_code="UNAUTHORIZED"
            )

    @property
    def method(self) -> AuthMethod:
        """The one way to authenticate, by the contract's order of preference."""
        if self.refresh_token:
            return AuthMethod.REFRESH_TOKEN
        if self.username and self.password:
            return AuthMethod.PASSWORD
        if self.token:
            return AuthMethod.STATIC_TOKEN
        if self.username or self.password:
            missing = "password" if self.username else "username"
            raise CtmCredentialsError(
                f"the secret has no refresh_token or token, and its {missing} is missing",
                error_code="UNAUTHORIZED",
            )
        raise CtmCredentialsError(
            "the secret holds no refresh_token, username and password, or token",
            error_code="UNAUTHORIZED",
        )

    def register_secrets(self) -> None:
        """Have CtmError scrub the credentials from CTM's words (``errors.register_secret``).

        The domains and the CA certificate are names and public data, not credentials.
        """
        for value in (self.refresh_token, self.password, self.token, self.username):
            register_secret(value)

    def __repr__(self) -> str:
        extras = [name for name in ("domain", "auth_domain", "ca_bundle") if getattr(self, name)]
        return f"CtmCredentials(method={self.method.value!r}, with={extras!r})"

    __str__ = __repr__

    @classmethod
    def parse(cls, secret: str) -> CtmCredentials:
        """Parse a SecretString; raise CtmCredentialsError naming the problem (never a value)."""
        if not isinstance(secret, str):
            raise CtmCredentialsError("the secret is not a string", error_code="UNAUTHORIZED")
        text = secret.strip()
        if not text:
            raise CtmCredentialsError("the secret is empty", error_code="UNAUTHORIZED")
        if text.startswith(("{", "[")):
            return cls._from_json(text)
        if _CONTROL.search(text) or " " in text:
            raise CtmCredentialsError(
                "the bare-string secret contains whitespace or control characters",
                error_code="UNAUTHORIZED",
            )
        if JWT_SHAPE.fullmatch(text):
            return cls(token=text)
        return cls(refresh_token=text)

    @classmethod
    def _from_json(cls, text: str) -> CtmCredentials:
        try:
            document = json.loads(text)
        except ValueError:
            # The decoder's message is position-only, but its exception keeps the document.
            raise CtmCredentialsError(
                "the secret looks like JSON but is not valid JSON", error_code="UNAUTHORIZED"
            ) from None
        if not isinstance(document, dict):
            raise CtmCredentialsError("the secret is not a JSON object", error_code="UNAUTHORIZED")
        values: dict[str, str | None] = {}
        for name in _FIELDS:
            value = document.get(name)
            if value is None:
                values[name] = None
                continue
            if not isinstance(value, str):
                raise CtmCredentialsError(
                    f"the secret's {name} must be a string", error_code="UNAUTHORIZED"
                )
            value = value.strip()
            if name != "ca_bundle" and _CONTROL.search(value):
                raise CtmCredentialsError(
                    f"the secret's {name} contains control characters", error_code="UNAUTHORIZED"
                )
            values[name] = value or None
        return cls(**values)


class CredentialsCache:
    """Parsed credentials from a loader; the loader owns the time-based cache (at most 5 min).

    ``get()`` asks the loader every time (cheap when it caches) so a rotated secret is picked
    up within the loader's max age; the string is only re-parsed when it changed. Every read
    registers the credentials with ``errors.register_secret``.
    """

    def __init__(self, loader: SecretLoader) -> None:
        self._loader = loader
        self._lock = threading.Lock()
        self._raw: str | None = None
        self._parsed: CtmCredentials | None = None

    def get(self, *, force: bool = False) -> CtmCredentials:
        """Current credentials; ``force`` bypasses the loader's cache (after an auth failure)."""
        with self._lock:
            try:
                raw = self._loader(force)
            except CtmCredentialsError:
                raise
            except Exception as exc:
                # Say which kind of failure (AccessDenied, throttling...) but not its text:
                # a loader's message is not ours to vouch for.
                message = f"could not load the CTM credentials secret ({_failure_kind(exc)})"
                permanent = type(exc).__name__ in _NO_AWS_CREDENTIALS
                if permanent or _aws_code(exc) in _PERMANENT_SECRET_ERRORS:
                    raise CtmCredentialsError(message, error_code="UNAUTHORIZED") from None
                # Throttling, a network blip: every key would fail alike, but only for now.
                raise CtmSecretUnavailableError(message, error_code="CONNECTION") from None
            if raw != self._raw or self._parsed is None:
                self._parsed = CtmCredentials.parse(raw)
                self._raw = raw
            self._parsed.register_secrets()
            return self._parsed

    def ca_bundle(self) -> str | None:
        """The PEM of CTM's CA from the secret, if it holds one."""
        return self.get().ca_bundle


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


def _aws_code(exc: Exception) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        if isinstance(code, str) and code.isidentifier():
            return code
    return None


def _failure_kind(exc: Exception) -> str:
    """The class name, plus the AWS error code when the loader raised a botocore ClientError."""
    code = _aws_code(exc)
    return f"{type(exc).__name__} {code}" if code else type(exc).__name__
