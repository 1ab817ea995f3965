"""API adapters: request -> logic call -> response. Shared by the API Lambda handlers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from payments.auth import Merchant, authenticate
from payments.config import get_settings
from payments.http import ApiRequest
from payments.observability.logging import logger
from payments.services import api_keys

if TYPE_CHECKING:
    from pydantic import BaseModel

# pydantic is imported by the functions that parse a merchant's body, not by the webhook
# function, which shares this package: its import is a third of a cold start (README).
M = TypeVar("M", bound="BaseModel")


def authenticated(request: ApiRequest) -> Merchant:
    merchant = authenticate(
        key_id=request.header("x-api-key"),
        timestamp=request.header("x-timestamp"),
        signature=request.header("x-signature"),
        method=request.method,
        path=request.path,
        body=request.body,
        lookup=api_keys().lookup,
        tolerance_seconds=get_settings().signature_tolerance_seconds,
    )
    logger.append_keys(merchant_id=merchant.merchant_id)
    return merchant


def parse_body(request: ApiRequest, model: type[M]) -> M:
    """Validate the JSON body: one 400 listing every invalid field (`invalid_request_from`)."""
    from pydantic import ValidationError

    from payments.models import invalid_request_from

    body: dict[str, Any] = request.json()
    try:
        return model.model_validate(body)
    except ValidationError as err:
        errors = err.errors(include_input=False, include_url=False, include_context=False)
        raise invalid_request_from([dict(e) for e in errors]) from None
