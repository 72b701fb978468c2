"""Refresh function entry point: EventBridge Scheduler, EventBridge rules, SQS and the sweep
(docs/reference.md 4.2), dispatched by ``cckm_refresh.refresh_function``.
"""

import functools
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from cckm_refresh.config import RefreshSettings
from cckm_refresh.observability import logger, metrics
from cckm_refresh.refresh_function import RefreshFunction
from cckm_refresh.run.service import RefreshService
from cckm_refresh.wiring import load_settings

settings = load_settings(RefreshSettings)  # at cold start: a bad variable fails here, in one line


@functools.cache
def service() -> RefreshService:
    """The clients, made on the first invocation and kept by the container (the CTM client's
    HTTP stack is imported then too, not at every cold start's import)."""
    from cckm_refresh.run.wiring import refresh_service

    return refresh_service(settings)


function = RefreshFunction(settings, service)


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics(capture_cold_start_metric=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return function.handle(event, context)
