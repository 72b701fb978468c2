"""The run rules of docs/reference.md 4.3 and 4.4 without AWS or HTTP: the real intake,
chunk worker, resolver, engine and table store (over the simulation's DynamoDB), a fake CTM
and recording queues, on the simulation's virtual clock."""

from __future__ import annotations

import itertools
import json
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest

from cckm_refresh.config import RefreshSettings
from cckm_refresh.ctm.errors import CtmError, CtmPermanentError, CtmTransientError
from cckm_refresh.ctm.transport import UNPACED, Pacer
from cckm_refresh.engine import RefreshEngine
from cckm_refresh.model import Status
from cckm_refresh.ratelimit import TenancyRateLimiter
from cckm_refresh.run.chunks import ChunkWorker
from cckm_refresh.run.intake import Intake
from cckm_refresh.run.report import Action, Rejection, RunReport
from cckm_refresh.run.resolution import Resolver
from cckm_refresh.run.service import RefreshService
from cckm_refresh.run.sweep import Sweeper, SweepReport
from cckm_refresh.runtime import Deadline
from cckm_refresh.triggers import single_delivery, sqs_delivery
from devkit.sim.runtime import Killed, SimRuntime
from tests.unit.run_fakes import FakeQueues, Table

KEYS = {f"00000000-0000-4000-8000-00000000000{i}": ("t1" if i < 5 else "t2") for i in range(8)}
FLAKY = "00000000-0000-4000-8000-000000000001"


def key_object(key_id: str, version: str = "v2") -> dict[str, Any]:
    return {
        "id": key_id,
        "tenancy": KEYS[key_id],
        "region": "us-ashburn-1",
        "createdAt": "2026-01-01T00:00:00Z",
        "oci_params": {
            "key_id": f"ocid1.key.oc1.iad.{key_id[-4:]}",
            "current_key_version": version,
        },
    }


@dataclass(frozen=True)
class Page:
    resources: tuple[dict[str, Any], ...]
    malformed: int = 0
    next: Any = None


@dataclass
class FakeCtm:
    """The CTM list and refresh calls the run makes; ``failing`` keys answer 503."""

    failing: set[str] = field(default_factory=set)
    refreshed: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    listing_fails: CtmError | None = None
    lookup_fails: dict[str, CtmError] = field(default_factory=dict)  # key id -> its GET's error

    def list_page(self, filters: Any, **_: Any) -> Page:
        if self.listing_fails is not None:
            raise self.listing_fails
        return Page(tuple(key_object(k, "v1") for k in KEYS))

    def list_oci_keys(self, filters: Any = None, **_: Any) -> list[dict[str, Any]]:
        return []

    def get_oci_key(self, key_id: str, **_: Any) -> dict[str, Any]:
        if key_id in self.lookup_fails:
            raise self.lookup_fails[key_id]
        return key_object(key_id, "v1")

    def refresh(self, key_id: str, pacer: Pacer, deadline: Deadline) -> Any:
        pacer.wait(deadline)
        with self.lock:
            self.refreshed.append(key_id)
        if key_id in self.failing:
            raise CtmTransientError("busy", error_code="HTTP_503", http_status=503, attempts=3)
        return _Answer(key_object(key_id))


@dataclass(frozen=True)
class _Answer:
    body: dict[str, Any]
    http_status: int = 200
    attempts: int = 1
    elapsed: float = 0.0


@dataclass
class World:
    ctm: FakeCtm = field(default_factory=FakeCtm)
    runtime: SimRuntime = field(default_factory=SimRuntime)
    table: Table = field(init=False)
    queues: FakeQueues = field(default_factory=FakeQueues)
    rate: float = 1000.0
    chunk_size: int = 100
    sign_in: Any = None  # ChunkWorker's CTM sign-in; None: the engine's first call signs in

    def __post_init__(self) -> None:
        self.table = Table(self.runtime)

    def settings(self) -> RefreshSettings:
        return RefreshSettings(
            ctm_base_url="https://ctm.example.com",
            ctm_secret_id="s",
            results_table="t",
            work_queue_url=self.queues.queue_url,
            tenancy_queue_url=self.queues.tenancy_queue_url,
            ctm_timeout_seconds=2.0,
            fanout_chunk_size=self.chunk_size,
        )

    def service(self) -> RefreshService:
        settings = self.settings()
        runtime = self.runtime
        limiter = TenancyRateLimiter(self.rate, runtime=runtime)
        engine = RefreshEngine(self.ctm.refresh, limiter, concurrency=4)
        resolver = Resolver(self.ctm, self.table.latest_of, lambda _: None, runtime=runtime)
        worker = ChunkWorker(
            settings, engine, self.table, self.queues, sign_in=self.sign_in, runtime=runtime
        )
        intake = Intake(settings, resolver, worker, self.table, self.queues, runtime=runtime)
        sweeper = Sweeper(settings, self.table, self.queues, runtime)
        return RefreshService(intake, sweeper)

    def end(self, seconds: float) -> Deadline:
        return Deadline(self.runtime.now + seconds, self.runtime)

    def schedule(self, *, expect_report: bool = True) -> RunReport:
        request = {"selector": {"all": True}}
        event = {"scheduled_time": "T0", "execution_id": "e", "request": request}
        service = self.service()

        def process() -> Any:
            try:
                return service.process(single_delivery(event), self.end(300))
            except (Killed, CtmError):
                if expect_report:
                    raise
                return None

        report = self.runtime.run(process)
        assert isinstance(report, RunReport) or not expect_report
        return report

    def deliver(self, deliveries: list[Any], seconds: float = 300.0) -> list[Any]:
        service = self.service()
        reports: list[Any] = self.runtime.run(
            lambda: service.process_batch(deliveries, self.end(seconds))
        )
        return reports

    def sweep(self) -> SweepReport:
        service = self.service()
        report: SweepReport = self.runtime.run(service.sweep)
        return report

    def wait(self, seconds: float) -> None:
        self.runtime.run(lambda: self.runtime.sleep(seconds))

    def deliver_chunks(self, receive_count: int = 1, seconds: float = 300.0) -> list[Any]:
        deliveries = [
            sqs_delivery(f"m{i}", json.dumps(m.body), receive_count, m.group)
            for i, m in enumerate(self.queues.sent)
        ]
        self.queues.sent.clear()
        service = self.service()
        reports: list[Any] = self.runtime.run(
            lambda: service.process_batch(deliveries, self.end(seconds))
        )
        assert self.runtime.errors == []
        return reports


def test_a_scheduled_request_becomes_one_chunk_message_per_tenancy() -> None:
    world = World()
    report = world.schedule()

    assert (report.status, report.fanned_out) == ("RUNNING", 8)
    assert world.ctm.refreshed == []  # the intake refreshes nothing: each tenancy is its queue's
    assert sorted(m.group for m in world.queues.sent) == ["t1", "t2"]
    for message in world.queues.sent:
        assert message.dedup_id == message.body["chunk"]
        assert {KEYS[k] for k in message.body["keys"]} == {message.group}
    run = world.table.runs["schedule-T0"]
    assert (run["requested"], run["open_chunks"], run.get("resolving")) == (8, 2, None)


def test_a_batch_of_chunks_reports_each_call_s_latency_once_on_its_own_chunk() -> None:
    # Given a run's two chunk messages (tenancies t1 and t2) delivered in one batch
    world = World()
    world.schedule()

    # When one engine pass refreshes both
    reports = world.deliver_chunks()

    # Then each report carries the latencies of its own keys (the metric adds them all up)
    assert [len(r.latencies_ms) for r in reports] == [r.count(Status.REFRESHED) for r in reports]
    assert sum(len(r.latencies_ms) for r in reports) == len(world.ctm.refreshed) == 8


def test_each_tenancy_s_first_chunk_is_sent_at_once_and_the_others_ten_to_a_call() -> None:
    # Given chunks of 2 keys: t1's 5 keys make 3 chunks, t2's 3 keys make 2
    world = World(chunk_size=2)

    # When the schedule's intake resolves and queues them
    world.schedule()

    # Then t1's first chunk left alone, as soon as it was made; t2's first left with what was
    # waiting (t1's second); the last two left together at the end of the resolution
    assert world.queues.send_calls == [["t1"], ["t1", "t2"], ["t1", "t2"]]


def test_the_chunks_refresh_their_keys_and_the_last_one_completes_the_run_once() -> None:
    world = World()
    world.schedule()

    reports = world.deliver_chunks()

    assert [r.verdict.action for r in reports] == [Action.DONE, Action.DONE]
    assert sorted(world.ctm.refreshed) == sorted(KEYS)
    run = world.table.runs["schedule-T0"]
    assert (run["status"], run["refreshed"], run["rotated"]) == ("COMPLETED", 8, 8)
    assert world.table.completions == 1


class SignIn:
    """A CTM sign-in that meets the read of the chunk's keys halfway: each waits (up to 5 s
    of virtual time) for the other to have started, so both are quick only when they run
    together."""

    def __init__(self, world: World, fails: bool = False) -> None:
        self.deadlines: list[float] = []
        self.met_the_read: list[bool] = []
        self._fails = fails
        self._started: set[str] = set()
        self._runtime = world.runtime
        self._changed = world.runtime.condition()
        read = world.table.results_and_pace

        def results_and_pace(*args: Any) -> Any:
            self.met_the_read.append(self._meet("reading", "signing in"))
            return read(*args)

        world.table.results_and_pace = results_and_pace  # type: ignore[method-assign]

    def _meet(self, mine: str, theirs: str) -> bool:
        """Say ``mine`` has started; wait up to 5 s for ``theirs``; whether it came in time."""
        with self._changed:
            self._started.add(mine)
            self._changed.notify_all()
            began = self._runtime.now
            while theirs not in self._started and self._runtime.now < began + 5:
                self._changed.wait(began + 5 - self._runtime.now)
            return theirs in self._started and self._runtime.now < began + 5

    def __call__(self, deadline: Deadline) -> str:
        self.deadlines.append(deadline.at)
        self._meet("signing in", "reading")
        if self._fails:
            raise CtmTransientError("CTM busy", error_code="HTTP_503", http_status=503)
        return "jwt"


def test_a_chunk_signs_in_to_ctm_while_its_keys_are_read_within_the_calls_deadline() -> None:
    # Given a registered chunk and a worker that signs in beside the read of its keys
    world = World()
    world.sign_in = SignIn(world)
    world.schedule()
    delivered_at = world.runtime.now

    # When both chunks are delivered, with 300 s left
    world.deliver_chunks(seconds=300.0)

    # Then the sign-in was going on while the keys were read (one pass: one sign-in), it had
    # to end when the engine's calls must, and the keys were refreshed
    assert world.sign_in.met_the_read[0] is True
    reserve = world.settings().recording_reserve_seconds
    assert world.sign_in.deadlines == [delivered_at + 300.0 - reserve]
    assert sorted(world.ctm.refreshed) == sorted(KEYS)


def test_no_sign_in_is_started_when_no_time_is_left_for_calls() -> None:
    # Given a registered chunk, and a sign-in that would record being asked
    world = World()
    asked: list[Deadline] = []
    world.sign_in = asked.append
    world.schedule()

    # When its chunks are delivered with 5 s left (the recording reserve: no call may start)
    world.deliver_chunks(seconds=5.0)

    # Then nothing signed in (no thread left running past the invocation), nothing refreshed
    assert (asked, world.ctm.refreshed) == ([], [])


def test_a_sign_in_that_fails_beside_the_read_fails_no_key() -> None:
    world = World()
    world.sign_in = SignIn(world, fails=True)
    world.schedule()

    reports = world.deliver_chunks()

    assert [r.verdict.action for r in reports] == [Action.DONE, Action.DONE]
    assert world.table.runs["schedule-T0"]["refreshed"] == 8


def test_a_tenancy_s_next_chunk_in_another_container_keeps_the_pace_of_the_last_one() -> None:
    # Given t1's first two chunks, at 1 key/s per tenancy, and the time of each refresh call
    world = World(rate=1.0, chunk_size=2)
    sent_at: list[float] = []
    refresh = world.ctm.refresh

    def timed_refresh(key_id: str, pacer: Pacer, deadline: Deadline) -> Any:
        pacer.wait(deadline)
        sent_at.append(world.runtime.now)
        return refresh(key_id, UNPACED, deadline)

    world.ctm.refresh = timed_refresh  # type: ignore[method-assign]
    world.schedule()
    first, second = [m for m in world.queues.sent if m.group == "t1"][:2]

    # When the first is delivered to one container, then the second to a new one
    world.queues.sent = [first]
    world.deliver_chunks()
    world.queues.sent = [second]
    world.deliver_chunks()

    # Then the new container's first call left one spacing (1 / (1 x 0.95) s) after the other
    # container's last, as the pace handed on in the first chunk's close said
    spacing = 1 / 0.95
    assert [round(b - a, 6) for a, b in itertools.pairwise(sent_at)] == [round(spacing, 6)] * 3
    last_sent = world.runtime.time() - world.runtime.now + sent_at[-1]
    assert world.table.paces["t1"].last_sent_ms == round(last_sent * 1000)


def test_a_late_duplicate_of_a_chunk_refreshes_nothing_and_counts_nothing() -> None:
    world = World()
    world.schedule()
    messages = list(world.queues.sent)
    world.deliver_chunks()
    world.ctm.refreshed.clear()

    world.queues.sent = messages
    world.deliver_chunks(receive_count=2)

    assert world.ctm.refreshed == []
    assert world.table.runs["schedule-T0"]["refreshed"] == 8
    assert world.table.completions == 1


def test_pending_keys_bring_their_message_back_until_the_last_delivery_fails_them() -> None:
    world = World(ctm=FakeCtm(failing={FLAKY}))
    world.schedule()
    messages = list(world.queues.sent)

    first = world.deliver_chunks(receive_count=1)

    flaky_chunk = next(r for r in first if r.pending)
    assert (flaky_chunk.verdict.action, flaky_chunk.verdict.delay) == (Action.RETRY, 30)
    assert world.table.results[("schedule-T0", FLAKY)]["status"] == "PENDING"

    world.queues.sent = messages
    last = world.deliver_chunks(receive_count=5)  # MAX_RECEIVE_COUNT's default

    assert Action.DEAD_LETTER in [r.verdict.action for r in last]
    assert world.table.results[("schedule-T0", FLAKY)]["status"] == "FAILED"
    run = world.table.runs["schedule-T0"]
    assert (run["status"], run["refreshed"], run["failed"]) == ("COMPLETED", 7, 1)


def test_keys_not_started_before_the_margin_are_handed_on_in_their_chunk() -> None:
    # Given one refresh per second per tenancy and half a second before the deadline margin
    world = World(rate=1.0)
    world.schedule()

    reports = world.deliver_chunks(seconds=2 * 2.0 + 5 + 0.5)

    # Then one key per tenancy is refreshed and each chunk comes back whole, in its group
    assert len(world.ctm.refreshed) == 2
    assert [r.verdict.action for r in reports] == [Action.DONE, Action.DONE]
    assert sum(r.handed_off for r in reports) == 6
    assert sorted(m.group for m in world.queues.sent) == ["t1", "t2"]
    assert world.table.runs["schedule-T0"]["status"] == "RUNNING"


def test_a_rejected_request_is_recorded_and_copied_never_retried() -> None:
    world = World()
    service = world.service()
    bad = sqs_delivery("bad", '{"colour": 1}', 1)
    [result] = world.runtime.run(lambda: service.process_batch([bad], world.end(60)))

    assert isinstance(result, Rejection)
    assert result.verdict.action is Action.DONE
    assert world.table.rejected["bad"].startswith("colour")
    assert world.queues.dead_letters == [('{"colour": 1}', result.error)]


def test_a_completed_run_answers_a_replay_with_its_counts() -> None:
    world = World()
    world.schedule()
    world.deliver_chunks()

    replay = world.schedule()

    assert (replay.status, replay.counts.refreshed if replay.counts else None) == ("COMPLETED", 8)
    assert world.queues.sent == []
    assert world.table.runs["schedule-T0"]["refreshed"] == 8


def test_a_hand_off_without_progress_counts_as_a_delivery_until_the_last_fails_the_keys() -> None:
    # Given a chunk whose every delivery has too little time to start a call (with 5 deliveries)
    world = World(rate=1.0)
    world.schedule()
    world.queues.sent = [m for m in world.queues.sent if m.group == "t2"]

    # When each delivery hands the chunk on untouched
    handoffs = []
    for _ in range(5):
        [report] = world.deliver_chunks(seconds=2 * 2.0 + 5 - 1)
        handoffs += [m.body.get("handoffs", 0) for m in world.queues.sent]

    # Then each hand-off counted one delivery more, and the fifth gave up: its keys FAILED
    # with DEADLINE, the message deleted and copied to the dead-letter queue, t2's chunk closed
    assert handoffs == [1, 2, 3, 4]
    assert (report.verdict.action, report.gave_up) == (Action.DONE, 3)
    assert len(world.queues.dead_letters) == 1
    t2 = [r for (_, k), r in world.table.results.items() if KEYS[k] == "t2"]
    assert {(r["status"], r["error_code"]) for r in t2} == {("FAILED", "DEADLINE")}
    assert world.ctm.refreshed == []


def test_a_chunk_registered_and_never_sent_is_found_by_the_sweep_and_the_run_completes() -> None:
    # Given a schedule whose container died between registering its first chunk and sending it
    world = World()
    world.queues.send = lambda messages: (_ for _ in ()).throw(Killed())  # type: ignore[method-assign]
    world.schedule(expect_report=False)
    assert world.table.runs["schedule-T0"]["open_chunks"] == 1
    del world.queues.send

    # When the sweep runs before and after the run's stuck threshold
    early = world.sweep()
    world.wait(world.settings().stuck_after_seconds)
    late = world.sweep()
    world.deliver_chunks()  # the chunk, and the request (its resolution had not finished)
    world.deliver_chunks()  # the chunk the request registered then

    # Then only the late sweep found it stuck, queued its open chunk and its resolution again,
    # and the run completed with every key refreshed once
    assert (early.stuck, late.stuck) == ((), ("schedule-T0",))
    assert (late.chunks_queued, late.listings_queued) == (1, 1)
    run = world.table.runs["schedule-T0"]
    assert (run["status"], run["refreshed"], run.get("sweeps")) == ("COMPLETED", 8, 1)
    assert sorted(world.ctm.refreshed) == sorted(KEYS)
    assert world.sweep().open_runs == 0


def test_a_run_whose_completion_was_lost_with_its_last_delivery_is_completed_by_the_sweep() -> None:
    # Given a run whose last chunk closed in a container killed before it completed the run,
    # on the message's last delivery (so no delivery ever comes again: it dead-letters)
    world = World()
    world.schedule()
    *first, last = [
        sqs_delivery(f"m{i}", json.dumps(m.body), world.settings().max_receive_count, m.group)
        for i, m in enumerate(world.queues.sent)
    ]
    world.queues.sent.clear()
    world.runtime.run(lambda: world.service().process_batch(first, world.end(300)))
    world.table.complete_if_done = lambda run_id: (_ for _ in ()).throw(Killed())  # type: ignore[method-assign]
    service = world.service()

    def killed_before_completing() -> None:
        with pytest.raises(Killed):
            service.process_batch([last], world.end(300))

    world.runtime.run(killed_before_completing)
    del world.table.complete_if_done
    run = world.table.runs["schedule-T0"]
    assert (run["status"], run["open_chunks"], run["refreshed"]) == ("RUNNING", 0, 8)

    # When the sweep finds it stuck
    world.wait(world.settings().stuck_after_seconds)
    report = world.sweep()

    # Then it queued nothing (nothing is owed) and completed the run, counts as they were
    assert (report.stuck, report.completed, world.queues.sent) == (
        ("schedule-T0",),
        ("schedule-T0",),
        [],
    )
    run = world.table.runs["schedule-T0"]
    assert (run["status"], run["refreshed"], run["failed"]) == ("COMPLETED", 8, 0)
    assert world.sweep().open_runs == 0
    assert len(world.ctm.refreshed) == len(KEYS)


def test_a_schedule_whose_resolution_was_lost_is_resolved_again_from_its_kept_request() -> None:
    # Given a schedule that failed mid-resolution every time (CTM unreachable)
    world = World()
    world.ctm.listing_fails = CtmTransientError("down", error_code="CONNECTION")
    world.schedule(expect_report=False)
    world.ctm.listing_fails = None

    # When the sweep finds it stuck
    world.wait(world.settings().stuck_after_seconds)
    report = world.sweep()

    # Then it sent the request again, under the run's id, and the run completes from it
    assert report.listings_queued == 1
    [message] = world.queues.sent
    assert message.body == {"selector": {"all": True}, "run_id": "schedule-T0"}
    world.deliver_chunks()  # the request, taken in: it queues the chunks
    world.deliver_chunks()
    assert world.table.runs["schedule-T0"]["refreshed"] == 8


def test_a_listing_ctm_refuses_for_good_completes_the_run_saying_so() -> None:
    world = World()
    world.ctm.listing_fails = CtmPermanentError("sort refused", error_code="HTTP_400")

    report = world.schedule()

    run = world.table.runs["schedule-T0"]
    assert (report.status, run["status"]) == ("COMPLETED", "COMPLETED")
    assert run["listing_error"]["error_code"] == "HTTP_400"


def test_a_run_s_last_listing_delivery_that_fails_completes_it_with_what_was_listed() -> None:
    world = World()
    world.ctm.listing_fails = CtmTransientError("CTM busy", error_code="HTTP_503")
    request = json.dumps({"selector": {"all": True}, "request_id": "r"})

    [first] = world.deliver([sqs_delivery("m", request, 1)])
    [last] = world.deliver([sqs_delivery("m", request, 5)])

    assert (first.verdict.action, last.verdict.action) == (Action.RETRY, Action.DEAD_LETTER)
    run = world.table.runs["r"]
    assert (run["status"], run["listing_error"]["error_code"]) == ("COMPLETED", "HTTP_503")


def test_a_named_key_whose_tenancy_cannot_be_learnt_now_is_never_refreshed_beside_it() -> None:
    # Given a pipeline naming three keys never seen, one of them CCKM cannot look up just now
    world = World()
    world.ctm.lookup_fails[FLAKY] = CtmTransientError("busy", error_code="HTTP_503")
    named = [FLAKY, *[k for k in KEYS if k != FLAKY][:2]]
    request = json.dumps({"keys": named, "request_id": "p"})

    # When its deliveries come, the last one included
    [first] = world.deliver([sqs_delivery("m", request, 1)])
    sent_after_first = list(world.queues.sent)
    [last] = world.deliver([sqs_delivery("m", request, world.settings().max_receive_count)])

    # Then no key went to a queue or to CTM without its tenancy (two invocations could pace
    # one tenancy at once): the request was delivered again, and its last delivery failed
    # the keys it names with the lookup's error, the run complete and saying so
    assert (first.verdict.action, sent_after_first) == (Action.RETRY, [])
    assert last.verdict.action == Action.DEAD_LETTER
    assert world.ctm.refreshed == []
    results = {k: r for (run, k), r in world.table.results.items() if run == "p"}
    assert {(r["status"], r["error_code"]) for r in results.values()} == {("FAILED", "HTTP_503")}
    assert world.table.runs["p"]["status"] == "COMPLETED"


def test_a_named_key_whose_lookup_ctm_refuses_for_good_fails_alone() -> None:
    # Given a pipeline naming three keys, CTM refusing the lookup of one of them for good
    world = World()
    world.ctm.lookup_fails[FLAKY] = CtmPermanentError(
        "forbidden", error_code="NCERRPermissionDenied", http_status=403
    )
    others = [k for k in KEYS if k != FLAKY][:2]
    request = json.dumps({"keys": [FLAKY, *others], "request_id": "p"})

    # When it is taken in and its chunks delivered
    world.deliver([sqs_delivery("m", request, 1)])
    world.deliver_chunks()

    # Then that key failed with CTM's refusal, and the others were refreshed in their groups
    results = {k: r for (run, k), r in world.table.results.items() if run == "p"}
    assert (results[FLAKY]["status"], results[FLAKY]["error_code"]) == (
        "FAILED",
        "NCERRPermissionDenied",
    )
    assert sorted(world.ctm.refreshed) == sorted(others)
    assert world.table.runs["p"]["status"] == "COMPLETED"
