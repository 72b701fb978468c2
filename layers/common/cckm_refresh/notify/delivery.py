"""Getting a notification to SNS once: ledger claim, publish, ledger mark. The webhook mirrors
a batch after all its SNS publishing, so it can neither delay nor repeat an SNS message."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cckm_refresh.notify.events import Notification
from cckm_refresh.notify.ledger import Claim, NotificationLedger
from cckm_refresh.observability import logger
from cckm_refresh.runtime import Deadline


class NotificationInFlight(Exception):
    """Another invocation holds the claim; the record must be retried later."""


@dataclass(frozen=True)
class SnsPublisher:
    """Publishes notifications with the attributes subscription filter policies match on."""

    client: Any
    topic_arn: str

    def publish(self, notification: Notification) -> str:
        """SNS's message id."""
        response = self.client.publish(
            TopicArn=self.topic_arn,
            Subject=notification.subject,
            Message=json.dumps(notification.body(), default=str, separators=(",", ":")),
            MessageAttributes={
                "event_type": {"DataType": "String", "StringValue": str(notification.event_type)},
                "severity": {"DataType": "String", "StringValue": str(notification.severity)},
            },
        )
        return str(response.get("MessageId", ""))


@dataclass(frozen=True)
class Notifier:
    """Delivers each notification at most once to SNS."""

    ledger: NotificationLedger
    publisher: SnsPublisher
    count: Callable[[str], None] = lambda metric: None

    def deliver(self, notification: Notification, end: Deadline) -> bool:
        """True when this call published it, False when it was published before. Raises when
        it must be retried (SNS failed, or another invocation holds it)."""
        context, key = notification.log_fields(), notification.dedupe_key
        claim = self.ledger.claim(key, end)
        if claim is Claim.SENT:
            logger.info("notification already sent", extra=context)
            self.count("NotificationsDuplicateSkipped")
            return False
        if claim is Claim.IN_FLIGHT:
            raise NotificationInFlight(f"{key} is being sent by another invocation; retry later")
        try:
            message_id = self.publisher.publish(notification)
        except Exception:
            # Else the claim lapses with this invocation's deadline and a retry takes it over.
            failure = "could not release the claim of an unsent notification"
            _logged(functools.partial(self.ledger.release, key), failure, context)
            raise
        # Kept as delivered: failing the record would publish it again once the lease ran out.
        failure = "notification published but not marked sent"
        _logged(functools.partial(self.ledger.mark_sent, key, message_id), failure, context)
        self.count("NotificationsPublished")
        logger.info(
            "notification published",
            extra=context | {"summary": notification.summary, "message_id": message_id},
        )
        return True


def _logged(action: Callable[[], None], failure: str, context: dict[str, str]) -> None:
    """``action()``, its failure logged (by type: a message may quote anything), not raised."""
    try:
        action()
    except Exception as error:
        logger.warning(failure, extra=context | {"reason": type(error).__name__})
