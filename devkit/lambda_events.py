"""The events Lambda delivers, made from what moto returns: SQS records' message attributes
(camelCase), stream records' timestamps (epoch seconds) and images (plain values)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from boto3.dynamodb.types import TypeDeserializer


def lambda_message_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    # Lambda renames SQS's MessageAttributes fields to camelCase and always lists both lists.
    converted: dict[str, Any] = {}
    for name, attribute in attributes.items():
        entry: dict[str, Any] = {
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": attribute["DataType"],
        }
        if "StringValue" in attribute:
            entry["stringValue"] = attribute["StringValue"]
        if "BinaryValue" in attribute:
            entry["binaryValue"] = attribute["BinaryValue"]
        converted[name] = entry
    return converted


def epoch_seconds(value: Any) -> Any:
    # boto3 parses the stream's timestamp into a datetime; Lambda delivers whole epoch seconds.
    return int(value.timestamp()) if isinstance(value, datetime) else value


def deserialize_image(image: Mapping[str, Any]) -> dict[str, Any]:
    """A stream image (DynamoDB JSON) as plain Python values, for assertions and printing."""
    deserializer = TypeDeserializer()
    return {name: deserializer.deserialize(value) for name, value in image.items()}


# --- a local stack from a shell ---------------------------------------------------------------


def sqs_event(messages: Sequence[Mapping[str, Any]], queue_arn: str, region: str) -> dict[str, Any]:
    """The Lambda SQS event for messages received with every attribute."""
    records = []
    for message in messages:
        record: dict[str, Any] = {
            "messageId": message["MessageId"],
            "receiptHandle": message["ReceiptHandle"],
            "body": message["Body"],
            "attributes": dict(message.get("Attributes", {})),
            "messageAttributes": lambda_message_attributes(message.get("MessageAttributes", {})),
            "md5OfBody": message["MD5OfBody"],
            "eventSource": "aws:sqs",
            "eventSourceARN": queue_arn,
            "awsRegion": region,
        }
        if "MD5OfMessageAttributes" in message:
            record["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
        records.append(record)
    return {"Records": records}
