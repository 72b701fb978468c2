"""The chat webhook (Slack and Teams): one notification POSTed before a deadline (``Webhook``),
and a stream batch's mirror behind a breaker that lasts one invocation (``WebhookMirror``).

The URL is a secret (whoever holds it can post into the channel): no log line or exception
message quotes it, nor requests' errors, which do. Retries are ours, not urllib3's ``Retry``:
it gives every attempt the first one's timeout whatever is left, knows no deadline, and sleeps
on the wall clock (a 429's ``Retry-After`` up to 6 h), below where a test can see.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple
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


class WebhookError(Exception):
    """The webhook did not take the message. The message never contains the URL."""


class WebhookUnavailable(WebhookError):
    """The last attempt got 5xx, 429 or a connection error and no retry is left: the
    webhook is down or throttling, and will be for the next message too."""


class WebhookTimedOut(WebhookUnavailable):
    """An attempt got no answer within its timeout: the webhook may be hanging."""


class NoTimeLeft(WebhookError):
    """Too little time was left before the deadline for a POST, so none was started."""


def webhook_payload(notification: Notification) -> dict[str, Any]:
    """``{"text": <summary>, ...}``: Slack and Teams read ``text``; ``title`` is Teams' card
    heading; the other fields are ignored by both and useful to anything else."""
    return {
        "text": notification.summary,
        "title": notification.subject,
        "event_type": str(notification.event_type),
        "severity": str(notification.severity),
    }


def url_from_secret(secret_id: str, max_age: int = 300) -> Callable[[], str]:
    """A loader of the ``{"url": "https://..."}`` secret, cached by Powertools for
    ``max_age`` seconds (a rotated URL is picked up within that time)."""

    def load() -> str:
        from aws_lambda_powertools.utilities import parameters

        secret = parameters.get_secret(secret_id, transform="json", max_age=max_age)
        url = secret.get("url") if isinstance(secret, dict) else None
        if not isinstance(url, str) or not url:
            raise WebhookError('the webhook secret has no "url" string')
        return url

    return load


@dataclass
class Webhook:
    """POSTs notifications to the webhook URL the loader returns."""

    url_loader: Callable[[], str]
    session: Any  # requests.Session
    runtime: Runtime = SYSTEM
    rng: Callable[[], float] = random.random
    attempts: int = WEBHOOK_ATTEMPTS

    def post(self, notification: Notification, deadline: Deadline) -> None:
        """Deliver it before ``deadline``: each attempt waits at most 10 s or what is left;
        5xx, 429 and connection errors are retried (capped backoff, full jitter) while a
        retry fits. Raises ``NoTimeLeft`` when no attempt could start, ``WebhookTimedOut``
        when one got no answer in time (not retried: a hanging webhook would hold a retry as
        long), ``WebhookUnavailable`` when the retryable failures outlasted the retries,
        ``WebhookError`` for any other failure; never quoting the URL."""
        if deadline.remaining() < MIN_ATTEMPT_TIME:
            raise NoTimeLeft("no time left to post to the webhook")
        url = self.url_loader()
        if urlsplit(url).scheme != "https":
            raise WebhookError("the webhook URL must start with https://")
        payload = webhook_payload(notification)
        problem, retryable = "no attempt made", False
        for attempt in range(1, self.attempts + 1):
            refusal = self._attempt(url, payload, deadline)
            if refusal is None:
                return
            problem, retryable = refusal
            if not retryable:
                break  # a 4xx other than 429 will not get better by asking again
            if attempt < self.attempts and not self._waited_to_retry(attempt, deadline):
                problem += ", no time left to retry"
                break
        failure = WebhookUnavailable if retryable else WebhookError
        raise failure(f"the webhook did not take the notification: {problem}")

    def _attempt(self, url: str, payload: dict[str, Any], deadline: Deadline) -> _Refusal | None:
        """One POST: None when the webhook took it, else what went wrong and whether a retry
        may help. Raises ``NoTimeLeft`` and ``WebhookTimedOut`` as ``post`` does."""
        import requests

        timeout = min(WEBHOOK_TIMEOUT, deadline.remaining())
        if timeout < MIN_ATTEMPT_TIME:  # loading the secret took what was left
            raise NoTimeLeft("no time left to post to the webhook")
        timed_out = False
        try:
            # verify=True explicitly: TLS is never switched off for a URL from a secret.
            response = self.session.post(
                url, json=payload, timeout=timeout, verify=True, allow_redirects=False
            )
        except requests.Timeout:
            timed_out = True
        except requests.RequestException as error:
            return _Refusal(type(error).__name__, True)  # never str(error): it quotes the URL
        if timed_out:  # raised out here, so requests' error is not its context
            raise WebhookTimedOut(f"the webhook did not answer within {timeout:.1f} s")
        if response.status_code < 300:
            return None
        status = response.status_code
        return _Refusal(f"HTTP {status}", status == 429 or status >= 500)

    def _waited_to_retry(self, attempt: int, deadline: Deadline) -> bool:
        """Sleep the back-off before the next attempt; False, without sleeping, when the
        attempt after it would not fit before ``deadline``."""
        pause = backoff.full_jitter(attempt, BACKOFF_BASE, BACKOFF_CAP, self.rng)
        if deadline.remaining() - pause < MIN_ATTEMPT_TIME:
            return False
        self.runtime.sleep(pause)
        return True


class _Refusal(NamedTuple):
    """Why one attempt did not deliver, and whether asking again may help."""

    problem: str
    retryable: bool


@dataclass(frozen=True)
class MirrorReport:
    """What became of one batch's mirrors."""

    posted: int = 0
    failed: int = 0
    skipped: int = 0


class WebhookMirror:
    """Posts a batch's published notifications to the webhook in the time the invocation has
    left; its outages and its slowness are logged and counted, never raised (failing a record
    would make the stream publish it to SNS again)."""

    def __init__(
        self,
        webhook: Webhook,
        count: Callable[[str, int], None] = lambda metric, value: None,
        margin: float = SAFETY_MARGIN,
    ) -> None:
        self._webhook = webhook
        self._count = count
        self._margin = margin

    def mirror(self, notifications: Sequence[Notification], end: Deadline) -> MirrorReport:
        """Post each notification in turn until ``end`` (the invocation's) less the safety
        margin. After a timeout, or retries spent on 5xx, 429 or connection errors, the rest
        are skipped: the webhook is taken to be hanging or down for the rest of the batch."""
        deadline = end.before(self._margin)
        posted = failed = 0
        skipped: Sequence[Notification] = ()
        reason = ""
        for index, notification in enumerate(notifications):
            try:
                self._webhook.post(notification, deadline)
            except NoTimeLeft:
                skipped, reason = notifications[index:], "no time left in the invocation"
                break
            except Exception as error:
                failed += 1
                _log_failure(notification, error)
                if isinstance(error, WebhookUnavailable):
                    skipped = notifications[index + 1 :]
                    reason = (
                        "the webhook timed out"
                        if isinstance(error, WebhookTimedOut)
                        else "the webhook is unavailable"
                    )
                    break
            else:
                posted += 1
        if failed:
            self._count("WebhookFailures", failed)
        if skipped:
            self._count("WebhookSkipped", len(skipped))
            logger.warning(
                "webhook mirrors skipped",
                extra={
                    "reason": reason,
                    "skipped": len(skipped),
                    "dedupe_keys": [n.dedupe_key for n in skipped],
                },
            )
        return MirrorReport(posted, failed, len(skipped))


def _log_failure(notification: Notification, error: Exception) -> None:
    # Only our own messages are safe to log: anything else may quote the URL.
    reason = str(error) if isinstance(error, WebhookError) else type(error).__name__
    logger.warning("webhook mirror failed", extra=notification.log_fields() | {"reason": reason})
