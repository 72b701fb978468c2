"""Getting a notification to SNS once: ledger claim, publish, ledger mark. The chat webhook is
not here: it mirrors a batch after all of its SNS publishing (``webhook.WebhookMirror``), so it
can neither delay nor repeat an SNS message.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

from cckm_refresh.notify.events import Notification
from cckm_refresh.notify.ledger import Claim
from cckm_refresh.observability import logger
from cckm_refresh.runtime import Deadline


class Ledger(Protocol):
    def claim(self, dedupe_key: str, end: Deadline) -> Claim: ...
    def mark_sent(self, dedupe_key: str, message_id: str) -> None: ...
    def release(self, dedupe_key: str) -> None: ...


class Publisher(Protocol):
    def publish(self, notification: Notification) -> str: ...


class NotificationInFlight(Exception):
    """Another invocation holds the claim; the record must be retried later."""


class SnsPublisher:
    """Publishes notifications with the attributes subscription filter policies match on."""

    def __init__(self, client: Any, topic_arn: str) -> None:
        self._sns = client
        self._topic = topic_arn

    def publish(self, notification: Notification) -> str:
        """Publish to the topic; SNS's message id."""
        response = self._sns.publish(
            TopicArn=self._topic,
            Subject=notification.subject,
            Message=json.dumps(notification.body(), default=str, separators=(",", ":")),
            MessageAttributes={
                "event_type": {"DataType": "String", "StringValue": str(notification.event_type)},
                "severity": {"DataType": "String", "StringValue": str(notification.severity)},
            },
        )
        return str(response.get("MessageId", ""))


class Notifier:
    """Delivers each notification at most once to SNS."""

    def __init__(
        self,
        ledger: Ledger,
        publisher: Publisher,
        count: Callable[[str], None] = lambda metric: None,
    ) -> None:
        self._ledger = ledger
        self._publisher = publisher
        self._count = count

    def deliver(self, notification: Notification, end: Deadline) -> bool:
        """True when this call published it; False when it had been published already.
        Raises when it must be retried (SNS failed, or another invocation holds it). ``end``
        is the invocation's deadline, which the ledger's claim outlives by a margin."""
        context = notification.log_fields()
        claim = self._ledger.claim(notification.dedupe_key, end)
        if claim is Claim.SENT:
            logger.info("notification already sent", extra=context)
            self._count("NotificationsDuplicateSkipped")
            return False
        if claim is Claim.IN_FLIGHT:
            raise NotificationInFlight(
                f"{notification.dedupe_key} is being sent by another invocation; retry later"
            )
        try:
            message_id = self._publisher.publish(notification)
        except Exception:
            self._release(notification, context)
            raise
        try:
            self._ledger.mark_sent(notification.dedupe_key, message_id)
        except Exception as error:
            # Kept as delivered: failing the record would publish it again once the lease ran out.
            logger.warning(
                "notification published but not marked sent",
                extra=context | {"reason": type(error).__name__},
            )
        self._count("NotificationsPublished")
        logger.info(
            "notification published",
            extra=context | {"summary": notification.summary, "message_id": message_id},
        )
        return True

    def _release(self, notification: Notification, context: dict[str, str]) -> None:
        try:
            self._ledger.release(notification.dedupe_key)
        except Exception as error:
            # The claim then lapses with this invocation's deadline and a retry takes it over.
            logger.warning(
                "could not release the claim of an unsent notification",
                extra=context | {"reason": type(error).__name__},
            )
