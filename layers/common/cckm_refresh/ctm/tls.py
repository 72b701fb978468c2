"""The ``verify=`` passed on every request to CTM (docs/reference.md 3): the secret's
``ca_bundle`` alone when it has one, else the standard store with the overrides requests and
Python honour (``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``, and ``SSL_CERT_FILE``, which
requests ignores for certifi, so it is applied here); none only by explicit choice."""

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
    """Resolves and keeps the ``verify`` setting; owns the temporary CA file."""

    def __init__(self, *, verify_tls: bool, ca_bundle: Callable[[], str | None]) -> None:
        self._verify_tls = verify_tls
        self._ca_bundle = ca_bundle
        self._lock = threading.Lock()  # never held while the secret is read
        self._resolved: VerifySetting | None = None
        self.ca_file: str | None = None  # written from the secret's ca_bundle, once resolved
        self._quiet_hosts: set[str] = set()

    def verify_for(self, url: str) -> VerifySetting:
        if self._resolved is None:
            setting, ca_file = self._resolve()
            with self._lock:
                if self._resolved is None:
                    self._resolved, self.ca_file, ca_file = setting, ca_file, None
            _remove(ca_file)  # another thread resolved it first
        if (
            self._resolved is False
            and (host := urlsplit(url).hostname or "") not in self._quiet_hosts
        ):
            # The operator chose CTM_VERIFY_TLS=false (warned at cold start): silence
            # urllib3's per-request warning for CTM's host only.
            self._quiet_hosts.add(host)
            message = f"Unverified HTTPS request is being made to host '{re.escape(host)}'"
            warnings.filterwarnings("ignore", message, InsecureRequestWarning)
        return self._resolved

    def close(self) -> None:
        with self._lock:
            ca_file, self.ca_file, self._resolved = self.ca_file, None, None
        _remove(ca_file)

    def _resolve(self) -> tuple[VerifySetting, str | None]:
        if not self._verify_tls:
            return False, None
        pem = self._ca_bundle()
        if pem:
            with tempfile.NamedTemporaryFile(
                "w", prefix="ctm-ca-", suffix=".pem", delete=False, encoding="utf-8"
            ) as handle:
                handle.write(pem if pem.endswith("\n") else pem + "\n")
            return handle.name, handle.name
        if os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE"):
            return True, None
        return os.environ.get("SSL_CERT_FILE") or True, None


def _remove(path: str | None) -> None:
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
