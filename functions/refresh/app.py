"""Refresh function entry point: EventBridge Scheduler, EventBridge rules and SQS (CONTRACT 4.2)."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from cckm_refresh.observability import logger, metrics
from cckm_refresh.refresh_function import RefreshFunction, build_service, load_settings

function = RefreshFunction(load_settings(), build_service)


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics(capture_cold_start_metric=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return function.handle(event, context)
