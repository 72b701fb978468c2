"""Notify function entry point: the results table's stream to SNS and a chat webhook."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from cckm_refresh.notify_function import NotifyFunction, load_settings
from cckm_refresh.observability import logger, metrics

function = NotifyFunction(load_settings())


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics(capture_cold_start_metric=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return function.handle(event, context)
