"""What every container builds the same way: settings read and validated at cold start, and
AWS clients with one retry configuration, from which ``run.wiring`` and ``notify.wiring``
build each function's service. Nothing here runs at import, so importing a handler stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

# Imported at cold start, in Lambda's init phase (which runs at full CPU), not in the first
# invocation; the clients themselves are made on first use.
import boto3
from botocore.config import Config

from cckm_refresh.config import ConfigError, NotifySettings, RefreshSettings
from cckm_refresh.observability import logger

# Standard retry mode (throttling and transient errors, with backoff and a retry quota), a
# little more patient than its default of 3 attempts: a run's bookkeeping must not be lost to
# a burst of DynamoDB throttling.
AWS_MAX_ATTEMPTS = 8


S = TypeVar("S", RefreshSettings, NotifySettings)


def load_settings(kind: type[S], env: Mapping[str, str] | None = None) -> S:
    """Read the configuration at cold start: a bad variable is one log line naming it, then
    the ``ConfigError`` is raised again (the cold start fails)."""
    try:
        settings: S = kind.from_env(env)
    except ConfigError as error:
        logger.error(str(error), extra={"variable": error.variable})
        raise
    if isinstance(settings, RefreshSettings) and not settings.ctm_verify_tls:
        logger.warning("CTM_VERIFY_TLS is false: CTM's TLS certificate is NOT verified")
    return settings


def aws_client(service: str, connections: int = 10) -> Any:
    """A boto3 client with the project's retry configuration and ``connections`` pooled
    (one per call in flight, so none is opened and closed per call)."""
    config = Config(
        retries={"mode": "standard", "max_attempts": AWS_MAX_ATTEMPTS},
        max_pool_connections=max(10, connections),
    )
    return boto3.client(service, config=config)


def secret_loader(secret_id: str) -> Callable[[bool], str]:
    """Reads the CTM secret through Powertools (cached 5 minutes; ``True`` reads past the
    cache). A failure raises the SDK's own error (``AccessDeniedException``, no credentials...),
    not Powertools' ``GetParameterError`` around it, so the CTM client can tell a secret it
    may not read from a passing failure (``ctm.credentials``)."""
    from aws_lambda_powertools.utilities import parameters
    from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

    def load(force: bool) -> str:
        try:
            value = parameters.get_secret(secret_id, max_age=300, force_fetch=force)
        except GetParameterError as error:
            raise (error.__context__ or error) from None
        return value if isinstance(value, str) else bytes(value).decode()

    return load
