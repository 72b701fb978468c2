"""The optional chat webhook mirror (Slack and Teams incoming webhooks).

The URL is a secret: whoever holds it can post into the channel. It never appears in a log
line or an exception message, including the ones requests raises (they quote the URL).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cckm_refresh.notify.events import Notification

WEBHOOK_TIMEOUT = 10.0
WEBHOOK_ATTEMPTS = 3
BACKOFF_BASE = 0.5
BACKOFF_CAP = 4.0


class WebhookError(Exception):
    """The webhook did not take the message. The message never contains the URL."""


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
    sleep: Callable[[float], None] = time.sleep
    rng: Callable[[], float] = random.random
    attempts: int = WEBHOOK_ATTEMPTS

    def post(self, notification: Notification) -> None:
        """Deliver it, retrying 5xx, 429 and connection errors (capped backoff, full jitter);
        raise ``WebhookError`` (without the URL) when every attempt failed."""
        import requests

        url = self.url_loader()
        if urlsplit(url).scheme != "https":
            raise WebhookError("the webhook URL must start with https://")
        payload = webhook_payload(notification)
        problem = "no attempt made"
        for attempt in range(1, self.attempts + 1):
            try:
                # verify=True explicitly: TLS is never switched off for a URL from a secret.
                response = self.session.post(
                    url, json=payload, timeout=WEBHOOK_TIMEOUT, verify=True, allow_redirects=False
                )
            except requests.RequestException as error:
                problem = type(error).__name__  # never str(error): it quotes the URL
            else:
                if response.status_code < 300:
                    return
                problem = f"HTTP {response.status_code}"
                if response.status_code != 429 and response.status_code < 500:
                    break  # a 4xx other than 429 will not get better by asking again
            if attempt < self.attempts:
                self.sleep(self.rng() * min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt))
        raise WebhookError(f"the webhook did not take the notification: {problem}")
