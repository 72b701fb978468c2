"""The work queue: batched sends, dead-letter copies, and the back-off of messages owing keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from cckm_refresh.workqueue import QueueMessage, QueueSendError, WorkQueue, group_id


def message(key: str, group: str = "acme-prod") -> QueueMessage:
    return QueueMessage({"keys": [key], "run_id": "r", "chunk": "0" * 32}, group, f"d-{key}")


@dataclass
class FakeSqs:
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    refuse: bool = False

    def send_message_batch(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("send_message_batch", kwargs))
        if self.refuse:
            return {"Failed": [{"Id": "0", "Code": "InternalError"}]}
        return {"Successful": [{"Id": e["Id"]} for e in kwargs["Entries"]]}

    def send_message(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("send_message", kwargs))
        return {"MessageId": "m"}

    def change_message_visibility(self, **kwargs: Any) -> None:
        self.calls.append(("change_message_visibility", kwargs))
        if self.refuse:
            raise RuntimeError("ReceiptHandleIsInvalid")


def test_bodies_go_out_ten_per_batch_call() -> None:
    sqs = FakeSqs()
    queue = WorkQueue(sqs, "https://sqs/work", None)

    assert queue.send([message(str(i)) for i in range(23)]) == 23

    assert [len(kwargs["Entries"]) for _, kwargs in sqs.calls] == [10, 10, 3]
    # a standard queue takes no group or deduplication id
    assert "MessageGroupId" not in sqs.calls[0][1]["Entries"][0]


def test_with_a_tenancy_queue_each_message_goes_to_its_tenancys_group_once() -> None:
    sqs = FakeSqs()
    queue = WorkQueue(sqs, "https://sqs/work", None, "https://sqs/tenancy.fifo")

    queue.send([message("a", "acme prod/eu"), message("b", "~unknown")])

    [(_, kwargs)] = sqs.calls
    assert kwargs["QueueUrl"] == "https://sqs/tenancy.fifo"
    entries = kwargs["Entries"]
    assert [e["MessageGroupId"] for e in entries] == ["acme_prod/eu", "~unknown"]
    assert [e["MessageDeduplicationId"] for e in entries] == ["d-a", "d-b"]


def test_a_group_id_is_always_one_sqs_accepts() -> None:
    assert group_id("") == "_"
    assert group_id("t" * 300) == "t" * 128
    assert group_id("tenancy\u00e9\n") == "tenancy__"


def test_records_are_told_apart_by_their_queue() -> None:
    queue = WorkQueue(FakeSqs(), "https://sqs/1/work", None, "https://sqs/1/tenancy.fifo")
    assert queue.url_of("arn:aws:sqs:us-east-1:1:tenancy.fifo") == "https://sqs/1/tenancy.fifo"
    assert queue.url_of("arn:aws:sqs:us-east-1:1:work") == "https://sqs/1/work"
    assert queue.url_of("arn:aws:sqs:us-east-1:1:other") is None


def test_a_refused_send_raises_so_nothing_is_lost() -> None:
    with pytest.raises(QueueSendError):
        WorkQueue(FakeSqs(refuse=True), "https://sqs/work", None).send([message("a")])


def test_sending_without_a_work_queue_is_an_error() -> None:
    with pytest.raises(QueueSendError, match="WORK_QUEUE_URL"):
        WorkQueue(FakeSqs(), None, None).send([message("a")])


def test_a_rejected_body_is_copied_unchanged_with_its_error() -> None:
    sqs = FakeSqs()
    assert WorkQueue(sqs, None, "https://sqs/dlq").dead_letter("{bad", "body: is not valid JSON")
    [(operation, kwargs)] = sqs.calls
    assert operation == "send_message"
    assert kwargs["MessageBody"] == "{bad"
    assert kwargs["MessageAttributes"]["error"]["StringValue"] == "body: is not valid JSON"


def test_without_a_dead_letter_queue_the_copy_is_skipped() -> None:
    assert WorkQueue(FakeSqs(), None, None).dead_letter("{bad", "e") is False


def test_a_message_owing_keys_comes_back_sooner_than_the_visibility_timeout() -> None:
    sqs = FakeSqs()
    queue = WorkQueue(sqs, "https://sqs/work", None)
    assert queue.retry_later("https://sqs/work", "handle", 60) is True
    assert sqs.calls == [
        (
            "change_message_visibility",
            {"QueueUrl": "https://sqs/work", "ReceiptHandle": "handle", "VisibilityTimeout": 60},
        )
    ]


def test_a_refused_back_off_falls_back_to_the_visibility_timeout() -> None:
    queue = WorkQueue(FakeSqs(refuse=True), "https://sqs/work", None)
    assert queue.retry_later("https://sqs/work", "h", 60) is False


def test_the_error_attribute_never_carries_control_characters() -> None:
    sqs = FakeSqs()
    WorkQueue(sqs, None, "https://sqs/dlq").dead_letter("{}", "\u0000: is not a known field\n")
    [(_, kwargs)] = sqs.calls
    assert kwargs["MessageAttributes"]["error"]["StringValue"] == "?: is not a known field?"
