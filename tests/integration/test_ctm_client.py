"""The production CTM client against the CTM emulator, over real HTTPS on loopback.

Time is injected on both sides: the emulator's clock (``ctm_clock``: JWT expiry, throttle
windows) and the client's clocks and sleep, so expiry and backoff are exercised without waiting.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

pytest.importorskip("devkit.ctm_emulator", reason="the CTM emulator is not in this checkout yet")

from cckm_refresh.ctm.client import LIST_OVERLAP, SELECTOR_FILTERS, CtmClient, ListCursor
from cckm_refresh.ctm.errors import (
    CtmBadResponseError,
    CtmDeadlineError,
    CtmNotFoundError,
    CtmTlsError,
)
from cckm_refresh.selectors import resource_matches
from devkit.ctm_emulator import ListChurn, generate_keys

pytestmark = pytest.mark.integration


class Clock:
    """The client's own clock, moved by hand (the emulator's is the ``ctm_clock`` fixture)."""

    def __init__(self) -> None:
        self.now = time.time()
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


def password_secret(emulator: Any, *, with_ca: bool = True) -> str:
    secret = {"username": emulator.username, "password": emulator.password}
    if with_ca:
        secret["ca_bundle"] = emulator.ca_pem
    return json.dumps(secret)


def make_client(
    emulator: Any,
    secret: str | None = None,
    *,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], None] | None = None,
    max_attempts: int = 4,
    verify_tls: bool = True,
) -> CtmClient:
    own_clock = clock or Clock()
    return CtmClient.create(
        base_url=emulator.base_url,
        secret_loader=lambda force: secret if secret is not None else password_secret(emulator),
        timeout=5.0,
        max_attempts=max_attempts,
        verify_tls=verify_tls,
        sleep=sleep or (lambda seconds: None),
        clock=own_clock,
        wall_clock=own_clock,
        rng=lambda: 0.5,
    )


def key_ids(emulator: Any) -> list[str]:
    return [key["id"] for key in emulator.keys]


# --- TLS and authentication --------------------------------------------------------------


def test_refresh_over_https_verified_with_the_ca_from_the_secret(
    ctm_emulator: Any, no_ca_env: None
) -> None:
    # Given a secret holding the emulator's CA, and no CA overrides in the environment
    key_id = key_ids(ctm_emulator)[0]
    before = ctm_emulator.refresh_count(key_id)
    with make_client(ctm_emulator) as client:
        # When a key is refreshed
        response = client.refresh_oci_key(key_id)
    # Then CTM answered with the key, having refreshed it once
    assert response.http_status == 200
    assert response.body["id"] == key_id
    assert ctm_emulator.refresh_count(key_id) == before + 1


def test_a_bare_refresh_token_secret_with_the_ca_from_requests_ca_bundle(
    ctm_emulator: Any, no_ca_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a bare refresh token (no place for a CA) and the CA trusted through the environment
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ctm_emulator.ca_file))
    key_id = key_ids(ctm_emulator)[0]
    with make_client(ctm_emulator, ctm_emulator.issue_refresh_token()) as client:
        assert client.get_oci_key(key_id)["id"] == key_id


def test_tls_fails_without_the_ca_and_nothing_is_refreshed(
    ctm_emulator: Any, no_ca_env: None
) -> None:
    # Given a secret without ca_bundle: the standard trust store does not know the emulator
    before = ctm_emulator.refresh_count()
    client = make_client(ctm_emulator, password_secret(ctm_emulator, with_ca=False))
    # When a refresh is attempted, Then it fails as TLS, once, and never falls back
    with client, pytest.raises(CtmTlsError) as caught:
        client.refresh_oci_key(key_ids(ctm_emulator)[0])
    assert caught.value.error_code == "TLS"
    assert ctm_emulator.refresh_count() == before


def test_verification_off_works_by_explicit_choice(ctm_emulator: Any, no_ca_env: None) -> None:
    secret = password_secret(ctm_emulator, with_ca=False)
    with make_client(ctm_emulator, secret, verify_tls=False) as client:
        assert client.refresh_oci_key(key_ids(ctm_emulator)[0]).http_status == 200


def test_a_jwt_expiring_at_ctm_mid_sequence_is_renewed_after_the_401(
    ctm_emulator: Any, ctm_clock: Any
) -> None:
    # Given a JWT in use, and CTM's clock moving past its expiry while ours stands still
    ids = key_ids(ctm_emulator)
    issued = ctm_emulator.tokens_issued
    with make_client(ctm_emulator) as client:
        assert client.refresh_oci_key(ids[0]).attempts == 1
        ctm_clock.advance(301)
        # When the sequence goes on
        second = client.refresh_oci_key(ids[1])
        third = client.refresh_oci_key(ids[2])
    # Then the call that met the expiry renewed once and retried; the next one just worked
    assert second.attempts == 2
    assert third.attempts == 1
    assert ctm_emulator.tokens_issued == issued + 2


def test_a_jwt_nearing_expiry_is_renewed_before_ctm_refuses_it(
    ctm_emulator: Any, ctm_clock: Any
) -> None:
    # Given short-lived JWTs and both clocks moving together through a sequence of calls
    ctm_emulator.faults.token_lifetime = 120
    ids = key_ids(ctm_emulator)
    issued = ctm_emulator.tokens_issued
    client_clock = Clock()
    with make_client(ctm_emulator, clock=client_clock) as client:
        attempts = []
        for key_id in ids[:10]:
            attempts.append(client.refresh_oci_key(key_id).attempts)
            ctm_clock.advance(50)
            client_clock.advance(50)
    # Then no call ever met a 401: tokens were renewed ahead of time
    assert attempts == [1] * 10
    assert ctm_emulator.tokens_issued - issued >= 4


def test_concurrent_calls_share_one_token(ctm_emulator: Any) -> None:
    ids = key_ids(ctm_emulator)[:16]
    issued = ctm_emulator.tokens_issued
    with make_client(ctm_emulator) as client:
        barrier = threading.Barrier(len(ids))
        statuses: list[int] = []

        def refresh(key_id: str) -> None:
            barrier.wait()
            statuses.append(client.refresh_oci_key(key_id).http_status)

        threads = [threading.Thread(target=refresh, args=(key_id,)) for key_id in ids]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    assert statuses == [200] * len(ids)
    assert ctm_emulator.tokens_issued == issued + 1


# --- listing -------------------------------------------------------------------------------


def test_list_pages_through_every_key(ctm_emulator: Any) -> None:
    with make_client(ctm_emulator) as client:
        listed = [key["id"] for key in client.list_oci_keys(page_size=7)]
    assert sorted(listed) == sorted(key_ids(ctm_emulator))


def test_list_survives_pages_shorter_than_asked(ctm_emulator: Any) -> None:
    # Given a CTM that returns at most 4 keys per page whatever limit says
    ctm_emulator.faults.max_page_size = 4
    with make_client(ctm_emulator) as client:
        listed = [key["id"] for key in client.list_oci_keys(page_size=10)]
    # Then skip advanced by what came back: every key exactly once
    assert sorted(listed) == sorted(key_ids(ctm_emulator))


def field_of(key: dict[str, Any], name: str) -> Any:
    params = key.get("oci_params") or {}
    if name == "key_name":
        return params.get("display_name")
    return key[name] if name in key else params.get(name)


@pytest.mark.parametrize("name", sorted(SELECTOR_FILTERS))
def test_every_selector_filter_selects_exactly_the_matching_keys(
    ctm_emulator: Any, name: str
) -> None:
    # Given the value of this field on the first key
    value = field_of(ctm_emulator.keys[0], name)
    expected = {key["id"] for key in ctm_emulator.keys if field_of(key, name) == value}
    # When the list is filtered on it
    with make_client(ctm_emulator) as client:
        listed = [key["id"] for key in client.list_oci_keys({name: value}, page_size=5)]
    # Then exactly the matching keys come back, once each
    assert sorted(listed) == sorted(expected)


def test_list_by_ocid_finds_the_one_key(ctm_emulator: Any) -> None:
    key = ctm_emulator.keys[5]
    with make_client(ctm_emulator) as client:
        found = list(client.list_oci_keys(key_id=key["oci_params"]["key_id"]))
    assert [k["id"] for k in found] == [key["id"]]


# --- errors and retries ------------------------------------------------------------------


def test_an_unknown_key_is_not_found(ctm_emulator: Any) -> None:
    with make_client(ctm_emulator) as client, pytest.raises(CtmNotFoundError) as caught:
        client.refresh_oci_key(str(uuid.uuid4()))
    assert caught.value.http_status == 404
    assert caught.value.error_code == "NCERRResourceNotFound"


def test_a_removed_key_is_not_found(ctm_emulator: Any) -> None:
    key_id = key_ids(ctm_emulator)[2]
    ctm_emulator.remove(key_id)
    with make_client(ctm_emulator) as client, pytest.raises(CtmNotFoundError):
        client.refresh_oci_key(key_id)


def test_throttling_is_absorbed_by_retries(ctm_emulator: Any) -> None:
    sleeps: list[float] = []
    with make_client(ctm_emulator, sleep=sleeps.append) as client:
        client.issue_token()  # the burst below is for the refresh, not the login
        ctm_emulator.faults.fail_next(2, 429)
        response = client.refresh_oci_key(key_ids(ctm_emulator)[0])
    assert (response.http_status, response.attempts, response.throttled) == (200, 3, 2)
    assert len(sleeps) == 2


def test_oci_tenancy_throttling_is_absorbed_by_paced_retries(
    ctm_emulator: Any, ctm_clock: Any
) -> None:
    # Given OCI allowing 2 reads per second per tenancy (one refresh costs two)
    ctm_emulator.faults.tenancy_read_limit = 2
    tenancy = ctm_emulator.keys[0]["tenancy"]
    same_tenancy = [k["id"] for k in ctm_emulator.keys if k["tenancy"] == tenancy][:3]
    throttled_before = ctm_emulator.throttled_count
    # When three of its keys are refreshed back to back, backoff moving the emulator's time
    with make_client(ctm_emulator, sleep=ctm_clock.advance) as client:
        responses = [client.refresh_oci_key(key_id) for key_id in same_tenancy]
    # Then all succeeded, and the throttles CTM answered were retried
    assert [r.http_status for r in responses] == [200] * len(same_tenancy)
    throttled = ctm_emulator.throttled_count - throttled_before
    assert sum(r.throttled for r in responses) == throttled
    assert throttled >= 1


def test_a_503_burst_is_recovered_from(ctm_emulator: Any) -> None:
    with make_client(ctm_emulator, max_attempts=4) as client:
        client.issue_token()
        ctm_emulator.faults.fail_next(3, 503)
        response = client.refresh_oci_key(key_ids(ctm_emulator)[0])
    assert (response.http_status, response.attempts) == (200, 4)


# --- CTM as it really answers (the emulator's modes) --------------------------------------------


def real_time_client(emulator: Any, *, timeout: float = 5.0) -> CtmClient:
    """A client on the real monotonic clock, for deadlines measured over real sockets."""
    return CtmClient.create(
        base_url=emulator.base_url,
        secret_loader=lambda force: password_secret(emulator),
        timeout=timeout,
        rng=lambda: 0.5,
    )


def test_a_filter_ctm_ignores_is_checked_on_every_key_returned(ctm_emulator: Any) -> None:
    # Given a CTM that does not know key_name and ignores it: it answers every key
    ctm_emulator.faults.ignore_unknown_filters = True
    ctm_emulator.faults.unknown_filters = {"key_name"}
    wanted = ctm_emulator.keys[4]
    selector = {"key_name": wanted["oci_params"]["display_name"]}
    with make_client(ctm_emulator) as client:
        # When the selector is listed page by page
        page = client.list_page(selector, page_size=100)
        # Then the page holds what CTM answered, and resource_matches keeps the one key
        assert len(page.resources) == 30
        assert [k["id"] for k in page.resources if resource_matches(selector, k)] == [wanted["id"]]
        # And list_oci_keys yields only that key
        assert [k["id"] for k in client.list_oci_keys(selector)] == [wanted["id"]]


def test_a_wildcard_match_by_ctm_is_not_taken_for_a_selector_match(ctm_emulator: Any) -> None:
    ctm_emulator.faults.wildcard_filters = True
    prefix = ctm_emulator.keys[0]["oci_params"]["display_name"].split("-")[0]
    selector = {"key_name": f"{prefix}-*"}
    with make_client(ctm_emulator) as client:
        answered = client.list_page(selector).resources
        assert answered  # CTM matched by wildcard
        assert not [k for k in answered if resource_matches(selector, k)]
        assert list(client.list_oci_keys(selector)) == []


def test_refreshes_between_pages_do_not_shift_the_listing(ctm_emulator: Any) -> None:
    # Given a CTM whose default order is updatedAt (every refresh moves a key to the end)
    ctm_emulator.faults.default_sort = "updatedAt"
    ids: list[str] = []
    with make_client(ctm_emulator) as client:
        page = client.list_page(None, page_size=7)
        while True:
            # When each page's keys are refreshed before the next page is read
            for key in page.resources:
                ids.append(key["id"])
                client.refresh_oci_key(key["id"])
            if page.next is None:
                break
            page = client.list_page(None, cursor=page.next, page_size=7)
    # Then every key came exactly once
    assert sorted(ids) == sorted(key_ids(ctm_emulator))


# (keys discovered faster than pages are read would never let a listing end: add < page size)
@pytest.mark.parametrize(("remove", "add"), [(3, 2), (LIST_OVERLAP + 5, 0), (0, 5)])
def test_keys_added_and_removed_while_paging_are_never_doubled_or_skipped(
    ctm_emulator: Any, remove: int, add: int
) -> None:
    # Given 60 keys, and a CTM that forgets the first keys and discovers new ones after every page
    ctm_emulator.add_keys(generate_keys(30, seed=77))
    at_start = set(key_ids(ctm_emulator))
    ctm_emulator.faults.list_churn = ListChurn(remove=remove, add=add)
    # When the listing is read page by page, its cursor passed through JSON
    ids: list[str] = []
    with make_client(ctm_emulator) as client:
        page = client.list_page(None, page_size=8)
        ids += [k["id"] for k in page.resources]
        while page.next is not None:
            cursor = ListCursor.from_json(json.loads(json.dumps(page.next.to_json())))
            page = client.list_page(None, cursor=cursor, page_size=8)
            ids += [k["id"] for k in page.resources]
    # Then no key came twice, and every key present throughout came
    throughout = at_start & set(key_ids(ctm_emulator))
    assert len(ids) == len(set(ids))
    assert throughout <= set(ids)


def test_a_gone_key_is_not_found_as_gone(ctm_emulator: Any) -> None:
    key_id = key_ids(ctm_emulator)[0]
    ctm_emulator.faults.gone_keys = {key_id}
    with make_client(ctm_emulator) as client, pytest.raises(CtmNotFoundError) as caught:
        client.refresh_oci_key(key_id)
    assert (caught.value.error_code, caught.value.http_status) == ("GONE", 200)


@pytest.mark.parametrize("status", [404, 500])
def test_not_authorized_or_not_found_is_not_found_and_not_retried(
    ctm_emulator: Any, status: int
) -> None:
    key_id = key_ids(ctm_emulator)[0]
    ctm_emulator.faults.not_authorized_keys = {key_id: status}
    with make_client(ctm_emulator) as client, pytest.raises(CtmNotFoundError) as caught:
        client.refresh_oci_key(key_id)
    assert caught.value.error_code == "NotAuthorizedOrNotFound"
    assert caught.value.http_status == status
    assert ctm_emulator.refresh_count(key_id) == 1


def test_a_busy_vault_is_retried_until_it_answers(ctm_emulator: Any) -> None:
    key_id = key_ids(ctm_emulator)[0]
    ctm_emulator.faults.vault_busy(key_id, times=2)
    with make_client(ctm_emulator) as client:
        response = client.refresh_oci_key(key_id)
    assert (response.http_status, response.attempts) == (200, 3)


# The deadline (1 s) against what a call that missed it would take: the 20 s timeout, or a
# whole answer. Half the timeout bounds only a missed deadline, however busy the machine.
DEADLINE_SECONDS = 1.0
TIMEOUT_SECONDS = 20.0
MISSED_DEADLINE = TIMEOUT_SECONDS / 2


def test_a_trickling_answer_ends_at_the_deadline(ctm_emulator: Any) -> None:
    # Given a CTM sending each answer one byte every 20 ms (a key object: about a minute)
    ctm_emulator.faults.trickle_interval = 0.02
    key_id = key_ids(ctm_emulator)[0]
    with real_time_client(ctm_emulator, timeout=TIMEOUT_SECONDS) as client:
        client.issue_token()  # log in first: the refresh alone is timed
        started = time.monotonic()
        # When a refresh must end within 1 s
        with pytest.raises(CtmDeadlineError) as caught:
            client.refresh_oci_key(key_id, deadline=started + DEADLINE_SECONDS)
        elapsed = time.monotonic() - started
    # Then it ended at the deadline, not after the whole answer or the 20 s timeout
    assert elapsed < MISSED_DEADLINE
    assert caught.value.error_code == "DEADLINE"
    assert caught.value.transient


def test_a_slow_ctm_is_cut_at_the_deadline(ctm_emulator: Any) -> None:
    # Given a CTM answering refreshes after 30 s
    ctm_emulator.faults.latency = 30.0
    ctm_emulator.faults.latency_on_auth = False
    with real_time_client(ctm_emulator, timeout=TIMEOUT_SECONDS) as client:
        client.issue_token()
        started = time.monotonic()
        # When a refresh must end within 1 s
        with pytest.raises(CtmDeadlineError) as caught:
            client.refresh_oci_key(key_ids(ctm_emulator)[0], deadline=started + DEADLINE_SECONDS)
        elapsed = time.monotonic() - started
    # Then it was cut at the deadline, not at the 20 s timeout
    assert elapsed < MISSED_DEADLINE
    assert caught.value.error_code == "DEADLINE"


def test_an_oversized_answer_is_a_bad_response(ctm_emulator: Any) -> None:
    ctm_emulator.faults.oversize_bytes = 2 << 20  # a key object of 2 MiB
    with make_client(ctm_emulator) as client, pytest.raises(CtmBadResponseError) as caught:
        client.refresh_oci_key(key_ids(ctm_emulator)[0])
    assert caught.value.error_code == "BAD_RESPONSE"
    assert caught.value.attempts == 1


def test_an_oversized_list_page_is_a_bad_response(ctm_emulator: Any) -> None:
    ctm_emulator.faults.oversize_bytes = 9 << 20
    with make_client(ctm_emulator) as client, pytest.raises(CtmBadResponseError):
        client.list_page(None)


@pytest.mark.parametrize(
    "mode", ["refresh_not_a_key", "refresh_bad_oci_params", "refresh_not_json"]
)
def test_a_malformed_refresh_answer_fails_that_key_only(ctm_emulator: Any, mode: str) -> None:
    ctm_emulator.faults.malform(mode)
    ids = key_ids(ctm_emulator)
    with make_client(ctm_emulator) as client:
        with pytest.raises(CtmBadResponseError) as caught:
            client.refresh_oci_key(ids[0])
        assert caught.value.error_code == "BAD_RESPONSE"
        ctm_emulator.faults.clear()
        assert client.refresh_oci_key(ids[1]).http_status == 200


def test_malformed_list_items_are_skipped_and_counted(ctm_emulator: Any) -> None:
    ctm_emulator.faults.malform("list_item_without_id", "list_item_bad_oci_params")
    with make_client(ctm_emulator) as client:
        page = client.list_page(None, page_size=10)
        listed = list(client.list_oci_keys(page_size=10))
    assert page.malformed == 2
    assert len(page.resources) == 8
    # the rest of the listing carried on past them, each key at most once
    ids = [k["id"] for k in listed]
    assert len(ids) == len(set(ids))
    assert 8 < len(ids) < 30


def test_a_list_answer_without_a_list_is_a_bad_response(ctm_emulator: Any) -> None:
    ctm_emulator.faults.malform("list_not_a_list")
    with make_client(ctm_emulator) as client, pytest.raises(CtmBadResponseError):
        client.list_page(None)


def test_concurrent_refreshes_reuse_a_pool_of_connections(ctm_emulator: Any) -> None:
    # Given a client whose pool holds 4 connections, and 4 threads refreshing 40 keys in all
    ctm_emulator.add_keys(generate_keys(10, seed=5))
    ids = key_ids(ctm_emulator)
    client = CtmClient.create(
        base_url=ctm_emulator.base_url,
        secret_loader=lambda force: password_secret(ctm_emulator),
        pool_size=4,
    )
    before = ctm_emulator.connections_opened
    with client, ThreadPoolExecutor(max_workers=4) as pool:
        statuses = list(pool.map(lambda k: client.refresh_oci_key(k).http_status, ids))
    # Then at most one connection per thread was opened: none per call
    assert statuses == [200] * 40
    assert ctm_emulator.connections_opened - before <= 4
