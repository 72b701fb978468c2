"""docs/reference.md 4.1 as properties: any JSON either parses or is rejected naming a field,
nothing else escapes the parser, and no key id reaches the HTTP layer unless it is a canonical UUID.

Hypothesis explores three families of input: arbitrary JSON values, near-valid requests built
from the real field names with mutated values, and hostile key-id strings (path traversal,
encodings, look-alikes, trailing newlines...). Runs are derandomized: the same examples every
time, so a failure here is a bug, never bad luck.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cckm_refresh.ctm.auth import Bearer
from cckm_refresh.ctm.client import KEYS_PATH, CtmClient
from cckm_refresh.ctm.errors import RetryPolicy
from cckm_refresh.ctm.transport import UNPACED, Transport
from cckm_refresh.request import (
    REQUEST_FIELDS,
    RefreshRequest,
    RequestError,
    parse_request,
    parse_request_body,
)
from cckm_refresh.runtime import Deadline
from cckm_refresh.selectors import SELECTOR_FILTERS

PROPERTY_SETTINGS = settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
BASE_URL = "https://ctm.example.com"
CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
OCID = re.compile(r"ocid1\.key\.[a-z0-9._-]+")
UUID_TEXT = "90671f17-28ff-4f93-86dc-ff08983469e7"

# --- strategies ------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=25,
)

uuids_any_case = st.tuples(st.uuids(), st.booleans()).map(
    lambda pair: str(pair[0]).upper() if pair[1] else str(pair[0])
)
ocids = st.from_regex(r"ocid1\.key\.[a-z0-9._-]{1,60}", fullmatch=True)
HOSTILE_IDS = [
    "../../auth/tokens",
    "..%2F..%2Fauth%2Ftokens",
    f"{UUID_TEXT}/../../auth/tokens",
    f"{UUID_TEXT}/refresh",
    f"{UUID_TEXT}?limit=-1",
    f"{UUID_TEXT}#fragment",
    f"{UUID_TEXT}\n",
    f"{UUID_TEXT}\x00",
    f" {UUID_TEXT}",
    f"{UUID_TEXT} ",
    UUID_TEXT.replace("-", ""),
    "{" + UUID_TEXT + "}",
    "urn:uuid:" + UUID_TEXT,
    UUID_TEXT.replace("9", "\uff19"),  # a full-width digit
    UUID_TEXT.replace("a", "\u0430"),  # a Cyrillic a
    "ocid1.key.oc1.IAD.UPPER",
    "ocid1.key.oc1.iad/../../auth/tokens",
    "ocid1.key.oc1.iad?x=1",
    "ocid1.key.oc1.iad\n",
    "ocid1.key.",
    "ocid1.vault.oc1.iad.abc",
    "ocid1.key." + "a" * 300,
    "",
    "%00",
    "\ud800",
]
hostile_ids = (
    st.sampled_from(HOSTILE_IDS)
    | st.builds(
        lambda ident, suffix: ident + suffix,
        uuids_any_case | ocids,
        st.sampled_from(["/", "/..", "\n", "\r\n", "%2f", "?", "#", "\t", "\\", "/refresh"]),
    )
    | st.builds(lambda prefix, ident: prefix + ident, st.sampled_from(["/", "../", " "]), ocids)
    | st.text(max_size=300)
)
key_items = uuids_any_case | ocids | hostile_ids | json_values
keys_values = (
    st.lists(key_items, max_size=8)
    | st.lists(uuids_any_case | ocids, min_size=1, max_size=8)
    | st.just([UUID_TEXT] * 1001)
    | json_values
)
known_names = [*sorted(SELECTOR_FILTERS), "all", "id", ""]
selector_names = st.sampled_from(known_names) | st.text(max_size=10)
selector_values = (
    st.dictionaries(
        selector_names,
        st.text(max_size=30) | st.text(min_size=250, max_size=300) | json_values,
        max_size=4,
    )
    | st.just({"all": True})
    | st.dictionaries(st.just("all"), json_values, min_size=1)
    | json_values
)
names = (
    st.from_regex(r"[A-Za-z0-9._:-]{1,128}", fullmatch=True)
    | st.text(max_size=140)
    | st.text(alphabet="abc", min_size=129, max_size=140)
    | json_values
)
near_valid_requests = st.builds(
    lambda fields, extra: {**fields, **extra},
    st.fixed_dictionaries(
        {},
        optional={
            "keys": keys_values,
            "selector": selector_values,
            "request_id": names,
            "run_id": names,
            "reason": st.text(max_size=300) | json_values,
            "dry_run": st.booleans() | json_values,
        },
    ),
    st.dictionaries(st.text(max_size=10), json_values, max_size=1),
)
documents = json_values | near_valid_requests
HOSTILE_BODIES = [
    "",
    "   ",
    "{not json",
    "NaN",
    "[" * 100_000,
    '{"keys": [' + "9" * 5000 + "]}",  # longer than Python's int-conversion limit
    '{"keys": ["\\ud800"]}',
    '{"keys": ["' + UUID_TEXT + '"], "keys": 1}',
    "\ufeff{}",
]
bodies = (
    documents.map(lambda document: json.dumps(document, allow_nan=True))
    | st.text(max_size=200)
    | st.sampled_from(HOSTILE_BODIES)
)

# --- what a rejection may name ----------------------------------------------------------------


def fields_of(document: object) -> set[str]:
    """The field names a rejection of ``document`` may give: what the contract knows, or
    something the document itself holds (an unknown field, an index, a selector filter)."""
    named = {"request", "body", *REQUEST_FIELDS, "selector.all"}
    named |= {f"selector.{name}" for name in SELECTOR_FILTERS}
    if isinstance(document, Mapping):
        named |= {quoted(name) for name in document}
        keys = document.get("keys")
        if isinstance(keys, list):
            named |= {f"keys[{index}]" for index in range(len(keys))}
        selector = document.get("selector")
        if isinstance(selector, Mapping):
            named |= {f"selector.{quoted(name)}" for name in selector}
    return named


def quoted(name: object) -> str:
    """How a rejection quotes a name the document holds: printable, at most 64 characters."""
    return "".join(c if c.isprintable() else "?" for c in str(name)[:64]) or "?"


def parsed_or_rejected(parse: Any, value: object) -> RefreshRequest | RequestError:
    """The parser's answer; any exception other than RequestError escapes (and fails)."""
    try:
        return parse(value)  # type: ignore[no-any-return]
    except RequestError as error:
        return error


# --- the HTTP layer, recorded -----------------------------------------------------------------


class RecordingSession:
    """Stands in for the transport's ``requests.Session``: records URLs, answers 200."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        prepared = requests.Request(method, url, params=kwargs.get("params")).prepare()
        assert prepared.url is not None
        self.urls.append(prepared.url)
        path = urlsplit(prepared.url).path
        body: dict[str, Any] = {"resources": [], "total": 0}
        if path.endswith("/refresh"):
            body = {"id": path.split("/")[-2]}
        response = requests.Response()
        response.status_code = 200
        response._content = json.dumps(body).encode()
        return response

    def close(self) -> None:
        return None


class StaticBearer:
    """A token source that never calls CTM."""

    generation = 1

    def bearer(self, deadline: Deadline) -> Bearer:
        return Bearer("header.payload.signature", 1)

    def refused(self, bearer: Bearer) -> None:
        return None


def urls_sent_for(request: RefreshRequest) -> list[str]:
    """Drive a real CtmClient (real transport, recorded session) with the parsed request."""
    transport = Transport(retry=RetryPolicy(max_attempts=1))
    session = RecordingSession()
    transport.session = session  # type: ignore[assignment]
    client = CtmClient(BASE_URL, StaticBearer(), transport)  # type: ignore[arg-type]
    deadline = Deadline.within(60.0)
    for key_id in request.key_ids:
        client.refresh_oci_key(key_id, pacer=UNPACED, deadline=deadline)
    for ocid in request.ocids:
        client.find_oci_key(ocid, deadline=deadline)
    if request.selector is not None:
        filters = None if request.selector.all_keys else request.selector.as_query()
        client.list_page(filters, deadline=deadline)
    return session.urls


def assert_only_validated_ids_reach_http(request: RefreshRequest, urls: list[str]) -> None:
    refreshed = []
    for url in urls:
        parts = urlsplit(url)
        assert (parts.scheme, parts.netloc) == ("https", "ctm.example.com")
        if parts.path == KEYS_PATH:
            for ocid in parse_qs(parts.query).get("key_id", []):
                assert OCID.fullmatch(ocid)
            continue
        segments = parts.path.removeprefix(KEYS_PATH + "/").split("/")
        assert len(segments) == 2
        assert segments[1] == "refresh"
        assert CANONICAL_UUID.fullmatch(segments[0]), url
        refreshed.append(segments[0])
    assert refreshed == list(request.key_ids)


# --- properties ------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(document=documents)
@example(document={"keys": ["../../auth/tokens"]})
@example(document={"keys": [UUID_TEXT.upper(), UUID_TEXT, "ocid1.key.oc1.iad.a"]})
@example(document={"selector": {"all": True, "region": "x"}})
@example(document={"keys": [UUID_TEXT], "colour": "red"})
def test_any_json_document_parses_or_is_rejected_naming_a_field(document: object) -> None:
    # When any JSON value is parsed as a request
    answer = parsed_or_rejected(parse_request, document)

    # Then it is a request, or a RequestError naming a field of the contract or of the document
    if isinstance(answer, RequestError):
        assert answer.field in fields_of(document)


@PROPERTY_SETTINGS
@given(body=bodies)
@example(body='{"keys": [' + "9" * 5000 + "]}")
@example(body="[" * 100_000)
def test_any_message_body_parses_or_is_rejected_naming_a_field(body: str) -> None:
    # When any text arrives as an SQS message body
    answer = parsed_or_rejected(parse_request_body, body)

    # Then it is a request, or a RequestError naming the body or a field of the document
    if isinstance(answer, RequestError):
        try:
            document: object = json.loads(body)
        except (ValueError, RecursionError):
            document = None
        assert answer.field in fields_of(document)


def test_a_number_too_long_to_convert_is_rejected_as_a_bad_body() -> None:
    # Given a body whose integer is longer than Python converts (int_max_str_digits)
    body = '{"keys": [' + "9" * 5000 + "]}"

    # Then it is a rejection naming the body, not a ValueError that SQS would redeliver
    answer = parsed_or_rejected(parse_request_body, body)

    assert isinstance(answer, RequestError)
    assert answer.field == "body"


@PROPERTY_SETTINGS
@given(document=documents)
@example(document={"keys": [UUID_TEXT.upper(), "ocid1.key.oc1.iad.abc"], "selector": {"all": True}})
@example(document={"keys": [f"{UUID_TEXT}/../../auth/tokens"]})
@example(document={"selector": {"vault_name": "a/../b?c=d&e", "region": "us-ashburn-1"}})
def test_no_unvalidated_key_id_ever_reaches_the_http_layer(document: object) -> None:
    # Given whatever a request parsed into (rejections make no call at all)
    answer = parsed_or_rejected(parse_request, document)
    if isinstance(answer, RequestError):
        return

    # When a real CTM client is driven with it
    urls = urls_sent_for(answer)

    # Then every key in a URL path is a canonical UUID, and list lookups carry only OCIDs
    assert_only_validated_ids_reach_http(answer, urls)


@PROPERTY_SETTINGS
@given(key_id=hostile_ids)
def test_a_hostile_key_id_is_rejected_before_any_call_or_reaches_http_canonical(
    key_id: str,
) -> None:
    answer = parsed_or_rejected(parse_request, {"keys": [key_id]})

    if isinstance(answer, RequestError):
        assert answer.field in {"keys", "keys[0]"}
        return
    assert_only_validated_ids_reach_http(answer, urls_sent_for(answer))
