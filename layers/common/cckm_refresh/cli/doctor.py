"""``cckm-refresh doctor``: a preflight of the deployed settings, the CTM secret and the live CTM,
each read and used as the refresh function does (docs/reference.md 7.1). No value of the secret
and no token is printed: names and numbers only."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import ssl
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Any

from cckm_refresh.cli.common import (
    A_DAY,
    EXIT_CHECK_FAILED,
    EXIT_OK,
    CliError,
    print_table,
    version_label,
)
from cckm_refresh.cli.refresh import selector_from, settings_from
from cckm_refresh.config import ConfigError, RefreshSettings
from cckm_refresh.ctm import auth
from cckm_refresh.ctm.client import KEYS_PATH, CtmClient, KeyPage
from cckm_refresh.ctm.credentials import AuthMethod, CredentialsCache, CtmCredentials
from cckm_refresh.ctm.errors import (
    CtmAuthError,
    CtmError,
    CtmListingError,
    CtmNotFoundError,
    CtmTlsError,
)
from cckm_refresh.ctm.listing import sort_position
from cckm_refresh.ctm.transport import UNPACED
from cckm_refresh.keyids import InvalidKeyIdError, KeyIdKind, classify_key_id
from cckm_refresh.model import KeyInfo
from cckm_refresh.request import RequestError, parse_request
from cckm_refresh.run.resolution import SELECTOR_PAGE_SIZE
from cckm_refresh.runtime import Deadline
from cckm_refresh.selectors import resource_matches

FUNCTION_TIMEOUT_SECONDS = 300  # template.yaml's RefreshFunction Timeout
FIRST_PAGE_SIZE = 5  # small, so that a second page follows it
SHORT_JWT_SECONDS = 60.0  # below this the function signs in again every few calls
MAX_ROWS = 20  # of the selector's table
# What a password login asks its refresh token to live (auth.py), in seconds: CTM states the
# nearer end, the unused limit or the lifetime.
ASKED_SECONDS = (auth.SESSION_TOKEN_UNUSED_MINUTES * 60, auth.SESSION_TOKEN_LIFETIME_MINUTES * 60)
ASKED_FIELDS = (
    f"refresh_token_revoke_unused_in {auth.SESSION_TOKEN_UNUSED_MINUTES} and "
    f"refresh_token_lifetime {auth.SESSION_TOKEN_LIFETIME_MINUTES}"
)
REFERENCE_3 = "docs/reference.md 3"
STORE_A_REFRESH_TOKEN = f"store a refresh_token in the secret instead ({REFERENCE_3})"
READ_ACCESS = "check CTM_SECRET_ID and the right to read it, or pass --secret-file"


class Verdict(StrEnum):
    PASS = "PASS"  # noqa: S105 - a verdict, not a password
    WARN = "WARN"
    FAIL = "FAIL"
    SKIP = "SKIP"


PASS, WARN, FAIL, SKIP = Verdict.PASS, Verdict.WARN, Verdict.FAIL, Verdict.SKIP


@dataclass(frozen=True)
class Finding:
    """What one check saw (PASS) or what to do (WARN, FAIL); ``table``: a header, its rows."""

    verdict: Verdict
    detail: str
    table: tuple[tuple[str, ...], ...] = ()

    def line(self, check: str) -> str:
        return f"{self.verdict}  {check}: {self.detail}"

    def to_json(self, check: str) -> dict[str, Any]:
        document = {"check": check, "verdict": self.verdict.value, "detail": self.detail}
        return document | ({"table": self.table} if self.table else {})


def doctor(args: argparse.Namespace, env: dict[str, str]) -> int:
    """Run every check, print each as it ends, then a summary; 1 when one FAILed."""
    if args.function_timeout <= 0:
        raise CliError("--function-timeout must be a positive number of seconds")
    verdicts = []
    with closing(Preflight(args, env, _selector_query(args), _canary(args.canary))) as preflight:
        for name, finding in preflight.checks():
            verdicts.append(finding.verdict)
            if args.json:
                print(json.dumps(finding.to_json(name)))
                continue
            print(finding.line(name))
            if finding.table:
                print_table(finding.table[0], finding.table[1:], indent=" " * 6)
    if not args.json:
        print(summary(verdicts))
    return EXIT_CHECK_FAILED if FAIL in verdicts else EXIT_OK


def summary(verdicts: list[Verdict]) -> str:
    counts = Counter(verdicts)
    verdict = "fix the FAIL lines first" if counts[FAIL] else "ready"
    return "doctor: " + ", ".join(f"{counts[v]} {v.value}" for v in Verdict) + f": {verdict}"


def _selector_query(args: argparse.Namespace) -> dict[str, str] | None:
    """The selector flags as the function's list filters ({} for --all); None: none given."""
    selector = selector_from(args)
    if not selector:
        return None
    try:
        parsed = parse_request({"selector": selector}).selector
    except RequestError as error:
        raise CliError(f"invalid selector: {error}") from None
    return parsed.as_query() if parsed is not None else {}


def _canary(value: str | None) -> tuple[KeyIdKind, str] | None:
    try:
        return None if value is None else classify_key_id(value)
    except InvalidKeyIdError:
        raise CliError("--canary must be a CCKM key id (UUID) or an OCI key OCID") from None


@dataclass
class Preflight:
    """The checks, in order, with one CTM client built as the function builds its own."""

    args: argparse.Namespace
    env: dict[str, str]
    query: dict[str, str] | None
    canary: tuple[KeyIdKind, str] | None
    deadline: Deadline = field(default_factory=lambda: Deadline.within(A_DAY))
    _client: CtmClient | None = None
    # What a check found, for the checks that need it (set before any of them runs).
    settings: RefreshSettings = field(init=False)
    credentials: CtmCredentials = field(init=False)
    login_info: auth.LoginInfo = field(init=False)
    pages: tuple[KeyPage, KeyPage | None] = field(init=False)

    def checks(self) -> Iterator[tuple[str, Finding]]:
        """Each check in turn; SKIP for one whose ``needs`` did not pass or warn."""
        steps: list[tuple[str, str | None, Callable[[], Finding]]] = [
            ("settings", None, self.read_settings),
            ("secret", "settings", self.read_secret),
            ("tls", "secret", self.connect),
            ("login", "tls", self.login),
            ("refresh token", "login", lambda: refresh_token_finding(self.login_info)),
            ("list order", "login", self.list_two_pages),
            ("list pages", "list order", lambda: pages_finding(*self.pages)),
            ("function timeout", "settings", self.function_timeout),
        ]
        if self.query is not None:
            steps.insert(-1, ("selector", "list order", partial(self.count_selected, self.query)))
        if self.canary is not None:
            steps.append(("canary", "login", partial(self.refresh_canary, *self.canary)))
        verdicts: dict[str | None, Verdict] = {None: PASS}
        for name, needs, run in steps:
            if verdicts[needs] in (FAIL, SKIP):
                why = "failed" if verdicts[needs] is FAIL else "was skipped"
                finding = Finding(SKIP, f"needs {needs}, which {why}")
            else:
                finding = run()
            verdicts[name] = finding.verdict
            yield name, finding

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def read_settings(self) -> Finding:
        unused = {"RESULTS_TABLE": "-"} | ({"CTM_SECRET_ID": "-"} if self.args.secret_file else {})
        try:
            settings = self.settings = settings_from(self.args, self.env, unused)
        except ConfigError as error:
            return Finding(FAIL, f"{error}: set it, or pass its flag (docs/reference.md 2)")
        return Finding(
            PASS,
            f"CTM {settings.ctm_base_url}, secret {self.secret_source}, CTM_TIMEOUT_SECONDS "
            f"{settings.ctm_timeout_seconds:g}, CTM_MAX_ATTEMPTS {settings.ctm_max_attempts}, "
            f"TENANCY_RATE_LIMIT {settings.tenancy_rate_limit:g}/s",
        )

    @property
    def secret_source(self) -> str:
        if self.args.secret_file:
            return f"file {self.args.secret_file}"
        return f"{self.settings.ctm_secret_id} (Secrets Manager)"

    def load_secret(self, force: bool) -> str:
        """The secret's text, from the file or as the function reads it."""
        if self.args.secret_file:
            return Path(self.args.secret_file).read_text(encoding="utf-8")
        from cckm_refresh.wiring import secret_loader

        return secret_loader(self.settings.ctm_secret_id)(force)

    def read_secret(self) -> Finding:
        try:
            self.credentials = CredentialsCache(self.load_secret).get()
        except CtmError as error:
            todo = f"fix its value ({REFERENCE_3})"
            if error.message.startswith("could not load"):  # reading it failed, not its value
                todo = "check the path" if self.args.secret_file else READ_ACCESS
            if "CredentialsError" in error.message:  # botocore's No- or PartialCredentialsError
                todo = "set AWS credentials (AWS_PROFILE...), or pass --secret-file"
            return Finding(FAIL, f"{self.secret_source}: {error.message}: {todo}")
        return secret_finding(self.credentials)

    def function_timeout(self) -> Finding:
        return timeout_finding(self.settings, self.args.function_timeout)

    @property
    def client(self) -> CtmClient:
        if self._client is None:
            self._client = CtmClient.from_settings(self.settings, self.load_secret, pool_size=2)
        return self._client

    def connect(self) -> Finding:
        """One HTTPS call without a token, verified as every call of the client is."""
        client, trust, answered = self.client, _trust(self.credentials), 200
        try:
            client.transport.call("GET", client.base_url + KEYS_PATH, deadline=self.deadline)
        except CtmTlsError as error:
            return Finding(
                FAIL,
                f"{error.message}, verified against {trust}: put the PEM of the CA that signed "
                f"CTM's web certificate in the secret's ca_bundle ({REFERENCE_3})",
            )
        except CtmError as error:
            if error.http_status is None:
                return Finding(
                    FAIL,
                    f"{_said(error)}: check CTM_BASE_URL, and the route, DNS and firewall from "
                    "where the function runs (SubnetIds, SecurityGroupIds)",
                )
            answered = error.http_status
        if not self.settings.ctm_verify_tls:
            unverified = "anyone on the way can pose as CTM and take the credentials"
            return Finding(WARN, f"not verified (CTM_VERIFY_TLS=false): {unverified}; verify")
        return Finding(PASS, f"verified against {trust}; HTTP {answered} to a call without a token")

    def login(self) -> Finding:
        try:
            self.client.issue_token(self.deadline)
        except CtmError as error:
            refused = isinstance(error, CtmAuthError)
            todo = "check the secret's credentials and domain" if refused else "is CTM healthy?"
            return Finding(FAIL, f"{_said(error)}: {todo}")
        if self.client.tokens.last_login is None:  # issue_token signs in, or raises
            raise AssertionError("no login after issue_token")
        self.login_info = self.client.tokens.last_login
        return jwt_finding(self.login_info)

    def list_two_pages(self) -> Finding:
        """A small page, then one of the function's size after it, in the order it lists in."""
        try:
            first = self.client.list_page(None, page_size=FIRST_PAGE_SIZE, deadline=self.deadline)
            second = None
            if first.next is not None:
                second = self.client.list_page(
                    None, cursor=first.next, page_size=SELECTOR_PAGE_SIZE, deadline=self.deadline
                )
        except CtmError as error:
            return listing_failure(error)
        self.pages = (first, second)
        return order_finding(second or first)

    def count_selected(self, query: dict[str, str]) -> Finding:
        """The whole listing the selector's filters give, counted by tenancy and vault."""
        counts: Counter[tuple[str, str]] = Counter()
        page, mismatched = None, 0
        try:
            while page is None or page.next is not None:
                cursor = None if page is None else page.next
                page = self.client.list_page(
                    query, cursor=cursor, page_size=SELECTOR_PAGE_SIZE, deadline=self.deadline
                )
                keys = [KeyInfo.from_ctm(r) for r in page.resources if resource_matches(query, r)]
                mismatched += len(page.resources) - len(keys)
                counts.update((key.tenancy or "?", key.vault_name or "?") for key in keys)
        except CtmError as error:
            return listing_failure(error)
        return selector_finding(counts, _described(query), mismatched)

    def refresh_canary(self, kind: KeyIdKind, key: str) -> Finding:
        client, known = self.client, KeyInfo(key_id=key)
        try:
            find = client.find_oci_key if kind is KeyIdKind.OCID else client.get_oci_key
            found = find(key, deadline=self.deadline)
            if found is None:
                return Finding(FAIL, f"no key of CCKM has the OCID {key}: is its vault in CCKM?")
            known = KeyInfo.from_ctm(found)
            answer = client.refresh_oci_key(known.key_id, pacer=UNPACED, deadline=self.deadline)
        except CtmError as error:
            return canary_failure(error, known)
        fresh = KeyInfo.from_ctm(answer.body).filled_from(known)
        return Finding(
            PASS,
            f"{_named(fresh)} refreshed: {fresh.lifecycle_state}, version "
            f"{version_label(fresh.current_key_version)}, HTTP {answer.http_status} in "
            f"{answer.elapsed:.2f} s",
        )


# --- the verdicts ----------------------------------------------------------------------------


def secret_finding(credentials: CtmCredentials) -> Finding:
    """Which way the secret signs in and what comes with it: names, never values."""
    extras = [name for name in ("domain", "auth_domain") if getattr(credentials, name)]
    if credentials.ca_bundle is None:
        extras.append("no ca_bundle (the trust store verifies CTM)")
    else:
        try:
            loaded = ssl.create_default_context(cadata=credentials.ca_bundle)
        except (ssl.SSLError, ValueError):
            return Finding(FAIL, f"its ca_bundle does not load as PEM ({REFERENCE_3})")
        extras.append(f"a ca_bundle of {loaded.cert_store_stats()['x509']} certificate(s)")
    seen = f"signs in with its {credentials.method.value}, " + ", ".join(extras)
    if credentials.method is AuthMethod.STATIC_TOKEN:
        return Finding(WARN, f"{seen}; a bare token expires, unrenewed: {STORE_A_REFRESH_TOKEN}")
    return Finding(PASS, seen)


def jwt_finding(info: auth.LoginInfo) -> Finding:
    """The JWT's lifetime as CTM states it: in its answer (``duration``) and in its claims."""
    if info.grant_type is None:
        return Finding(PASS, "the secret's own JWT: no sign-in; CTM judges it at every call")
    how = f"{info.auth_method} accepted ({info.grant_type} grant)"
    stated = [s for s in (info.duration, info.exp_minus_iat) if s is not None]
    lifetimes = f"duration {_seconds(info.duration)}, exp - iat {_seconds(info.exp_minus_iat)}"
    if not stated:
        return Finding(WARN, f"{how}; CTM states no JWT lifetime: the function assumes 300 s")
    if max(stated) - min(stated) > 1:
        two = f"CTM states two JWT lifetimes ({lifetimes}): the function renews by the shorter"
        return Finding(WARN, f"{how}; {two}")
    if min(stated) < SHORT_JWT_SECONDS:
        return Finding(
            WARN,
            f"{how}; JWTs live {_seconds(min(stated))} ({lifetimes}): the function signs in "
            "again every few calls; CTM's default is 300 s",
        )
    return Finding(PASS, f"{how}; JWT lifetime {lifetimes}")


def refresh_token_finding(info: auth.LoginInfo) -> Finding:
    """``refresh_token_expires_in`` as CTM states it, against what a password login asks."""
    stated = info.refresh_token_expires_in
    if info.auth_method == AuthMethod.STATIC_TOKEN:
        return Finding(SKIP, "the secret's own JWT: no refresh token")
    if info.auth_method == AuthMethod.REFRESH_TOKEN:
        return Finding(PASS, f"the secret's; CTM states it ends in {_seconds(stated)} unused")
    factor = _asked_times(stated)
    if factor == 1:
        as_asked = f"as asked ({ASKED_FIELDS}, in minutes)"
        return Finding(PASS, f"the login's; CTM states it ends in {_seconds(stated)}, {as_asked}")
    asked = " or ".join(_seconds(a) for a in ASKED_SECONDS)
    if factor is not None:
        return Finding(
            WARN,
            f"CTM states {_seconds(stated)}, 60 times {'less' if factor < 1 else 'more'} than "
            f"asked ({asked}): it read {ASKED_FIELDS} as {_MINUTES_READ_AS[factor]}; "
            f"{STORE_A_REFRESH_TOKEN}",
        )
    return Finding(
        WARN,
        f"CTM states {_seconds(stated)}, not what was asked ({asked}): it may not apply "
        f"{ASKED_FIELDS}, and each login may leave a refresh token behind; {STORE_A_REFRESH_TOKEN}",
    )


_MINUTES_READ_AS = {1.0: "minutes", 1 / 60: "seconds", 60.0: "hours"}


def _asked_times(stated: float | None) -> float | None:
    """The factor by which ``stated`` is what was asked (the minutes read as CTM may read them),
    counted down for a moment (whole seconds, rounded down); None: it is not."""
    for factor, asked in itertools.product(_MINUTES_READ_AS, ASKED_SECONDS):
        seconds = asked * factor
        if stated is not None and seconds - max(2.0, seconds / 100) <= stated <= seconds + 1:
            return factor
    return None


def order_finding(page: KeyPage) -> Finding:
    """The order the listing settled on, and the fallbacks it took to get there."""
    if not page.fallbacks:
        return Finding(PASS, f"sort={page.sort} honoured, the function's first choice")
    now = f"sort={page.sort}" if page.sort else "CTM's own order, placed by the ids it re-reads"
    return Finding(
        WARN,
        f"{'; '.join(page.fallbacks)}: the function lists in {now}; nothing to change unless "
        "selector runs end LISTING_INCOMPLETE (docs/reference.md 4.3)",
    )


def pages_finding(first: KeyPage, second: KeyPage | None) -> Finding:
    """Two pages: their keys distinct and in the order asked; the page cap CTM answered at."""
    if second is None:
        return Finding(PASS, f"{len(first.resources)} key(s), one page: no order between pages")
    keys = [*first.resources, *second.resources]
    cap = second.page_cap or first.page_cap
    seen = f"{len(first.resources)} then {len(second.resources)} keys; " + (
        f"CTM answers at most {cap} keys per list call" if cap else "no page cap seen"
    )
    if _out_of_order(keys, second.sort):
        return Finding(FAIL, f"{seen}, not in sort={second.sort} order: report it with this output")
    repeated = len(keys) - len({k["id"] for k in keys})
    malformed = first.malformed + second.malformed
    if repeated or malformed:
        return Finding(
            WARN,
            f"{seen}; {repeated} listed twice (CTM's order changed between calls), {malformed} "
            "not key objects: selector runs may end LISTING_INCOMPLETE (docs/reference.md 4.3); "
            "doctor --all reads the whole listing as a run does",
        )
    order = f"sort={second.sort} order" if second.sort in _SORTED_BY else "CTM's own order"
    return Finding(PASS, f"{seen}; none repeated, in {order}")


# How many leading fields of a key's sort position each sort orders by.
_SORTED_BY = {"createdAt,id": 2, "createdAt": 1}


def _out_of_order(keys: Sequence[object], sort: str | None) -> bool:
    """``keys`` are not in ``sort``'s order (any order is CTM's own when it sorts by none)."""
    width = _SORTED_BY.get(sort or "", 0)
    strict = width == 2  # a key has one place; createdAt alone may tie
    positions = [p for p in map(sort_position, keys) if p is not None]
    pairs = itertools.pairwise(positions)
    return any(b[:width] < a[:width] or (strict and a == b) for a, b in pairs)


def listing_failure(error: CtmError) -> Finding:
    if isinstance(error, CtmListingError):
        todo = "selector runs end LISTING_INCOMPLETE on this CTM: name keys instead"
        return Finding(FAIL, f"{_said(error)}: {todo} (docs/reference.md 4.3)")
    return Finding(FAIL, f"{_said(error)}: the CTM user needs CCKM's right to list keys")


def selector_finding(
    counts: Mapping[tuple[str, str], int], described: str, mismatched: int
) -> Finding:
    """How many keys the selector gives, by tenancy (the unit of pace) and vault."""
    others = f"; CTM also listed {mismatched} that do not match (skipped)" if mismatched else ""
    tenancies: Counter[str] = Counter()
    for (tenancy, _vault), count in counts.items():
        tenancies[tenancy] += count
    if not tenancies:
        return Finding(WARN, f"no key matches {described}: check the values (exact names){others}")
    rows: list[tuple[str, ...]] = []
    for tenancy, total in sorted(tenancies.items(), key=lambda t: (-t[1], t[0])):
        vaults = sorted(((-n, v) for (t, v), n in counts.items() if t == tenancy))
        rows += [(tenancy, "(all)", str(total)), *(("", v, str(-n)) for n, v in vaults)]
    if len(rows) > MAX_ROWS:
        rows = [*rows[:MAX_ROWS], ("...", f"{len(rows) - MAX_ROWS} more rows", "")]
    return Finding(
        PASS,
        f"{tenancies.total()} key(s) match {described}: in "
        f"{_many(len(tenancies), 'tenancy', 'tenancies')}, {_many(len(counts), 'vault', 'vaults')}"
        + others,
        (("TENANCY", "VAULT", "KEYS"), *rows),
    )


def timeout_finding(settings: RefreshSettings, seconds: float) -> Finding:
    """The function's timeout against the margin it keeps (docs/reference.md 4.3)."""
    try:
        settings.check_time_for_one_call(seconds)
    except ConfigError as error:
        return Finding(FAIL, str(error))
    margin, rate = settings.deadline_margin_seconds, settings.tenancy_rate_limit
    left = seconds - margin
    return Finding(
        PASS,
        f"{seconds:g} s, less a margin of {margin:g} s (2 x CTM_TIMEOUT_SECONDS + 5 s): "
        f"{left:g} s, about {int(left * rate)} refreshes per tenancy at {rate:g}/s",
    )


def canary_failure(error: CtmError, key: KeyInfo) -> Finding:
    if error.error_code == "NotAuthorizedOrNotFound":
        return Finding(
            FAIL,
            f"OCI answered NotAuthorizedOrNotFound for {_named(key)}: deleted in OCI, or the OCI "
            f"policy of tenancy {key.tenancy or '?'} no longer lets CCKM read it: check that "
            "policy before treating the key as gone",
        )
    todo = ": name a key CCKM manages" if isinstance(error, CtmNotFoundError) else ""
    return Finding(FAIL, f"{_named(key)}: {_said(error)}{todo}")


def _trust(credentials: CtmCredentials) -> str:
    """What CTM's certificate is verified against, as ``ctm.transport.TlsPolicy`` decides."""
    if credentials.ca_bundle:
        return "the secret's ca_bundle"
    names = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE")
    override = next((name for name in names if os.environ.get(name)), None)
    return f"the trust store of {override}" if override else "the trust store"


def _said(error: CtmError) -> str:
    """A CTM error as one clause: its code (unless the message names it) and message."""
    message = error.message.rstrip(". ")
    return message if error.error_code in message else f"{error.error_code}: {message}"


def _named(key: KeyInfo) -> str:
    return f"{key.display_name or key.key_id}" + (f" ({key.tenancy})" if key.tenancy else "")


def _described(query: Mapping[str, str]) -> str:
    flags = [f"--{name.replace('_', '-')} {value}" for name, value in sorted(query.items())]
    return " ".join(flags) or "--all"


def _many(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def _seconds(value: float | None) -> str:
    return "nothing" if value is None else f"{value:g} s"
