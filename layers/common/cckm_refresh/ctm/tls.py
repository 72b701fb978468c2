"""What to pass as ``verify=`` on every request to CTM (CONTRACT section 3).

- ``ca_bundle`` in the secret: verify against that PEM alone, whatever the environment says.
- otherwise the standard trust store, with the overrides requests and Python honour:
  ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` (requests applies them when it is given ``True``)
  and ``SSL_CERT_FILE`` (which requests ignores in favour of certifi, so we apply it).
- ``CTM_VERIFY_TLS=false``: no verification, by explicit choice only.

The choice is made once, at the first request (the secret is loaded lazily), and passed on
every request because requests lets ``REQUESTS_CA_BUNDLE`` override ``Session.verify``.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import threading
import warnings
from collections.abc import Callable
from urllib.parse import urlsplit

from urllib3.exceptions import InsecureRequestWarning

VerifySetting = bool | str


class TlsPolicy:
    """Resolves and caches the ``verify`` setting; owns the temporary CA file."""

    def __init__(self, *, verify_tls: bool, ca_bundle: Callable[[], str | None]) -> None:
        self._verify_tls = verify_tls
        self._ca_bundle = ca_bundle
        self._lock = threading.Lock()
        self._resolved: VerifySetting | None = None
        self._ca_file: str | None = None
        self._quiet_hosts: set[str] = set()

    @property
    def ca_file(self) -> str | None:
        """Path of the CA file written from the secret's ``ca_bundle``, once resolved."""
        return self._ca_file

    def verify_for(self, url: str) -> VerifySetting:
        """The ``verify=`` value for a request to ``url``."""
        with self._lock:
            if self._resolved is None:
                self._resolved = self._resolve()
            if self._resolved is False:
                self._silence_insecure_warning(url)
            return self._resolved

    def close(self) -> None:
        """Remove the temporary CA file."""
        with self._lock:
            if self._ca_file is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._ca_file)
                self._ca_file = None
                self._resolved = None

    def _resolve(self) -> VerifySetting:
        if not self._verify_tls:
            return False
        pem = self._ca_bundle()
        if pem:
            with tempfile.NamedTemporaryFile(
                "w", prefix="ctm-ca-", suffix=".pem", delete=False, encoding="utf-8"
            ) as handle:
                handle.write(pem if pem.endswith("\n") else pem + "\n")
            self._ca_file = handle.name
            return handle.name
        if os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE"):
            return True
        return os.environ.get("SSL_CERT_FILE") or True

    def _silence_insecure_warning(self, url: str) -> None:
        # The operator chose CTM_VERIFY_TLS=false (and is warned at cold start); silence
        # urllib3's per-request warning for CTM's host only, not for every HTTPS call.
        host = urlsplit(url).hostname or ""
        if host in self._quiet_hosts:
            return
        self._quiet_hosts.add(host)
        warnings.filterwarnings(
            "ignore",
            message=f"Unverified HTTPS request is being made to host '{re.escape(host)}'",
            category=InsecureRequestWarning,
        )
