"""Notify function entry point: the results table's stream to SNS, then to a chat webhook in
the time left."""

import functools
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.typing import LambdaContext

from cckm_refresh.config import NotifySettings
from cckm_refresh.observability import logger, metrics
from cckm_refresh.runtime import Deadline
from cckm_refresh.wiring import load_settings

if TYPE_CHECKING:  # built on the first invocation, with its clients
    from cckm_refresh.notify.stream import StreamNotifier

settings = load_settings(NotifySettings)  # at cold start: a bad variable fails here, in one line


@functools.cache
def notifier() -> "StreamNotifier":
    """The clients, made on the first invocation and kept by the container."""
    from cckm_refresh.notify.wiring import stream_notifier

    return stream_notifier(settings)


# A batch whose every record failed is reported like any other: failed records are retried
# by Lambda from the first failure on, the rest are not published again (the ledger).
processor = BatchProcessor(
    event_type=EventType.DynamoDBStreams, raise_on_entire_batch_failure=False
)


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics(capture_cold_start_metric=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    batch = notifier().batch(Deadline.within(context.get_remaining_time_in_millis() / 1000))
    response = process_partial_response(
        event=event, record_handler=batch.publish, processor=processor, context=context
    )
    batch.mirror()  # with what is left of the invocation; never fails a record
    return dict(response)
