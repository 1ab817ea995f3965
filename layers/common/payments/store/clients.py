"""boto3 clients, created once per execution environment and only when first needed."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_stepfunctions import SFNClient


@lru_cache(maxsize=1)
def dynamodb() -> DynamoDBClient:
    import boto3
    from botocore.config import Config

    config = Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=2)
    return boto3.client("dynamodb", config=config)


@lru_cache(maxsize=1)
def stepfunctions() -> SFNClient:
    import boto3
    from botocore.config import Config

    # A synchronous Express execution can take as long as the workflow's own timeout. No
    # retries: a retried StartSyncExecution whose first answer was lost runs it twice.
    config = Config(retries={"mode": "standard", "max_attempts": 1}, read_timeout=30)
    return boto3.client("stepfunctions", config=config)


def reset() -> None:
    """Forget cached clients (tests switch endpoints)."""
    dynamodb.cache_clear()
    stepfunctions.cache_clear()


_serializer: Any = None
_deserializer: Any = None


def to_item(values: dict[str, Any]) -> dict[str, Any]:
    global _serializer  # noqa: PLW0603 - created on first use, not at import
    if _serializer is None:
        from boto3.dynamodb.types import TypeSerializer

        _serializer = TypeSerializer()
    return {k: _serializer.serialize(v) for k, v in values.items() if v is not None}


def from_item(item: dict[str, Any]) -> dict[str, Any]:
    global _deserializer  # noqa: PLW0603
    if _deserializer is None:
        from boto3.dynamodb.types import TypeDeserializer

        _deserializer = TypeDeserializer()
    return {k: _plain(_deserializer.deserialize(v)) for k, v in item.items()}


def _plain(value: Any) -> Any:
    """DynamoDB numbers come back as Decimal; amounts are integers."""
    from decimal import Decimal

    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
