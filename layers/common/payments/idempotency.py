"""Idempotency-Key handling with Powertools Idempotency on DynamoDB.

The key is scoped by operation and merchant; the payload hash is the raw body's SHA-256,
so the same key with a different body is refused (422). A replay returns the stored
outcome without running the operation again.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
from collections.abc import Callable
from functools import lru_cache
from typing import Any, TypeVar, cast

from payments.config import get_settings
from payments.errors import IdempotencyKeyReused, InvalidRequest, RequestInProgress
from payments.records import dump, load

T = TypeVar("T")

_work: contextvars.ContextVar[Callable[[], object]] = contextvars.ContextVar("work")
_replayed: contextvars.ContextVar[bool] = contextvars.ContextVar("replayed", default=False)


def validate_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not 1 <= len(key) <= 255:
        raise InvalidRequest(
            "Idempotency-Key must be 1-255 characters.",
            details=[{"field": "Idempotency-Key", "issue": "length must be 1-255"}],
        )
    return key


def _mark_replay(response: Any, _record: Any) -> Any:
    _replayed.set(True)
    return response


@lru_cache(maxsize=8)
def _idempotent_runner(model: type[Any]) -> tuple[Callable[..., object], Any]:
    from aws_lambda_powertools.utilities.idempotency import (
        DynamoDBPersistenceLayer,
        IdempotencyConfig,
        idempotent_function,
    )
    from aws_lambda_powertools.utilities.idempotency.serialization.custom_dict import (
        CustomDictSerializer,
    )

    settings = get_settings()
    persistence = DynamoDBPersistenceLayer(table_name=settings.idempotency_table)
    config = IdempotencyConfig(
        event_key_jmespath="[operation, merchant_id, key]",
        payload_validation_jmespath="body_sha256",
        raise_on_no_idempotency_key=True,
        expires_after_seconds=settings.idempotency_ttl_seconds,
        response_hook=cast(Any, _mark_replay),
    )

    @idempotent_function(  # type: ignore[untyped-decorator]
        data_keyword_argument="call",
        persistence_store=persistence,
        config=config,
        # The outcome is a record (`payments.records`): stored as its JSON-shaped dump.
        output_serializer=CustomDictSerializer(
            to_dict=dump, from_dict=functools.partial(load, model)
        ),
    )
    def run(call: dict[str, str]) -> object:
        return _work.get()()

    return cast(Callable[..., object], run), config


def reset() -> None:
    """Forget the persistence layers (their clients are bound to the old endpoint)."""
    _idempotent_runner.cache_clear()


def once(
    work: Callable[[], T],
    *,
    model: type[T],
    operation: str,
    merchant_id: str,
    key: str | None,
    body: bytes,
    lambda_context: Any = None,
) -> tuple[T, bool]:
    """Run `work` at most once per (operation, merchant, key). Returns (result, replayed)."""
    if key is None:
        return work(), False
    from aws_lambda_powertools.utilities.idempotency.exceptions import (
        IdempotencyAlreadyInProgressError,
        IdempotencyValidationError,
    )

    call = {
        "operation": operation,
        "merchant_id": merchant_id,
        "key": key,
        "body_sha256": hashlib.sha256(body).hexdigest(),
    }
    work_token = _work.set(work)
    replay_token = _replayed.set(False)
    try:
        run, config = _idempotent_runner(cast(Any, model))  # a class: hashable
        if lambda_context is not None:
            # Lets an in-progress record expire with the invocation, not only with the TTL.
            config.register_lambda_context(lambda_context)
        result = run(call=call)
        # The outcome itself, or on a replay the serializer's `load` of the stored one.
        return cast(T, result), _replayed.get()
    except IdempotencyValidationError:
        raise IdempotencyKeyReused() from None
    except IdempotencyAlreadyInProgressError:
        raise RequestInProgress(headers={"Retry-After": "1"}) from None
    finally:
        _work.reset(work_token)
        _replayed.reset(replay_token)
