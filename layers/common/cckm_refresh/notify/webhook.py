"""The chat webhook (Slack and Teams): one notification POSTed before a deadline (``Webhook``),
and a stream batch's mirror behind a breaker that lasts one invocation (``WebhookMirror``).

The URL is a secret (it lets anyone post into the channel): no log line or exception quotes
it, nor requests' errors, which do. Retries are ours: urllib3's ``Retry`` knows no deadline.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cckm_refresh import backoff
from cckm_refresh.notify.events import Notification
from cckm_refresh.observability import logger
from cckm_refresh.runtime import SYSTEM, Deadline, Runtime

WEBHOOK_TIMEOUT = 10.0  # docs/reference.md 6: the most one POST ever waits
WEBHOOK_ATTEMPTS = 3
BACKOFF_BASE = 0.5
BACKOFF_CAP = 4.0
MIN_ATTEMPT_TIME = 1.0  # a POST that would get less than this is not started
SAFETY_MARGIN = 3.0  # seconds of the invocation the webhook never gets (metrics, the response)
SECRET_MAX_AGE = 300  # seconds Powertools caches the URL: a rotated one is picked up by then


class WebhookError(Exception):
    """The webhook did not take the message (never quoting the URL)."""


class WebhookUnavailable(WebhookError):
    """5xx, 429 or a connection error with no retry left: down or throttling, for the next
    message too."""

    skips_the_rest_because = "the webhook is unavailable"


class WebhookTimedOut(WebhookUnavailable):
    """No answer within the timeout: hanging, maybe (not retried: a retry would hang too)."""

    skips_the_rest_because = "the webhook timed out"


class NoTimeLeft(WebhookError):
    """Too little time was left before the deadline to start a POST."""


def webhook_payload(notification: Notification) -> dict[str, Any]:
    """``{"text": <summary>, ...}``: Slack and Teams read ``text``; ``title`` is Teams' card
    heading; the other fields are ignored by both and useful to anything else."""
    return {
        "text": notification.summary,
        "title": notification.subject,
        "event_type": str(notification.event_type),
        "severity": str(notification.severity),
    }


def url_from_secret(secret_id: str) -> str:
    """The URL of the ``{"url": "https://..."}`` secret."""
    from aws_lambda_powertools.utilities import parameters

    secret = parameters.get_secret(secret_id, transform="json", max_age=SECRET_MAX_AGE)
    url = secret.get("url") if isinstance(secret, dict) else None
    if not isinstance(url, str) or not url:
        raise WebhookError('the webhook secret has no "url" string')
    return url


@dataclass
class Webhook:
    """POSTs notifications to the webhook URL the loader returns."""

    url_loader: Callable[[], str]
    session: Any  # requests.Session
    runtime: Runtime = SYSTEM
    rng: Callable[[], float] = random.random

    def post(self, notification: Notification, deadline: Deadline) -> None:
        """Each attempt waits at most 10 s or what is left; 5xx, 429 and connection errors are
        retried (capped backoff, full jitter) while a retry fits. Raises ``WebhookError``s."""
        if deadline.remaining() < MIN_ATTEMPT_TIME:
            raise NoTimeLeft("no time left to post to the webhook")
        url = self.url_loader()
        if urlsplit(url).scheme != "https":
            raise WebhookError("the webhook URL must start with https://")
        payload = webhook_payload(notification)
        for attempt in range(1, WEBHOOK_ATTEMPTS + 1):
            if (problem := self._attempt(url, payload, deadline)) is None:
                return
            if attempt == WEBHOOK_ATTEMPTS:
                break
            pause = backoff.full_jitter(attempt, BACKOFF_BASE, BACKOFF_CAP, self.rng)
            if deadline.remaining() - pause < MIN_ATTEMPT_TIME:
                problem += ", no time left to retry"
                break
            self.runtime.sleep(pause)
        raise WebhookUnavailable(f"the webhook did not take the notification: {problem}")

    def _attempt(self, url: str, payload: dict[str, Any], deadline: Deadline) -> str | None:
        """None when the webhook took it, else what went wrong if a retry may help. A refusal
        (a 4xx other than 429: asking again will not help) raises ``WebhookError``."""
        import requests

        timeout = min(WEBHOOK_TIMEOUT, deadline.remaining())
        if timeout < MIN_ATTEMPT_TIME:  # loading the secret took what was left
            raise NoTimeLeft("no time left to post to the webhook")
        try:
            # verify=True explicitly: TLS is never switched off for a URL from a secret.
            response = self.session.post(
                url, json=payload, timeout=timeout, verify=True, allow_redirects=False
            )
        except requests.Timeout:
            response = None
        except requests.RequestException as error:
            return type(error).__name__  # never str(error): it quotes the URL
        if response is None:  # raised out here, so requests' error is not its context
            raise WebhookTimedOut(f"the webhook did not answer within {timeout:.1f} s")
        status = response.status_code
        if status < 300:
            return None
        if status == 429 or status >= 500:
            return f"HTTP {status}"
        raise WebhookError(f"the webhook did not take the notification: HTTP {status}")


@dataclass(frozen=True)
class WebhookMirror:
    """Its outages and slowness are logged and counted, never raised (failing a record would
    make the stream publish it to SNS again)."""

    webhook: Webhook
    count: Callable[[str, int], None] = lambda metric, value: None

    def mirror(self, notifications: Sequence[Notification], end: Deadline) -> None:
        """Post each in turn until ``end`` (the invocation's) less the safety margin. After a
        ``WebhookUnavailable`` the rest are skipped: the webhook is hanging or down."""
        deadline = end.before(SAFETY_MARGIN)
        failed = 0
        skipped: Sequence[Notification] = ()
        for index, notification in enumerate(notifications):
            try:
                self.webhook.post(notification, deadline)
            except NoTimeLeft:
                skipped, reason = notifications[index:], "no time left in the invocation"
                break
            except Exception as error:
                failed += 1
                # Only our own messages are safe to log: anything else may quote the URL.
                why = str(error) if isinstance(error, WebhookError) else type(error).__name__
                logger.warning(
                    "webhook mirror failed", extra=notification.log_fields() | {"reason": why}
                )
                if isinstance(error, WebhookUnavailable):
                    skipped, reason = notifications[index + 1 :], error.skips_the_rest_because
                    break
        if failed:
            self.count("WebhookFailures", failed)
        if skipped:
            self._skipped(skipped, reason)

    def _skipped(self, skipped: Sequence[Notification], reason: str) -> None:
        self.count("WebhookSkipped", len(skipped))
        keys = [n.dedupe_key for n in skipped]
        extra = {"reason": reason, "skipped": len(skipped), "dedupe_keys": keys}
        logger.warning("webhook mirrors skipped", extra=extra)
