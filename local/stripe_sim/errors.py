"""Stripe's error shapes, and which errors the idempotency layer saves."""

from __future__ import annotations

from typing import Any

Json = dict[str, Any]


class StripeError(Exception):
    """An API error in Stripe's wire format.

    `saved` marks errors raised by an endpoint once it runs (unknown objects, wrong states,
    amounts): Stripe saves those under the idempotency key. Parameter-shape errors are found
    before execution and are not saved, so a corrected retry with the same key can run.
    """

    def __init__(
        self, status: int, type_: str, message: str, *, saved: bool = False, **extra: Any
    ) -> None:
        super().__init__(message)
        self.status = status
        self.saved = saved
        self.body: Json = {"error": {"type": type_, "message": message, **extra}}


def _with_param(error: StripeError, param: str | None) -> StripeError:
    if param:
        error.body["error"]["param"] = param
    return error


def invalid(message: str, *, code: str, param: str | None = None) -> StripeError:
    return _with_param(StripeError(400, "invalid_request_error", message, code=code), param)


def missing_param(name: str) -> StripeError:
    return invalid(f"Missing required param: {name}.", code="parameter_missing", param=name)


def no_such(kind: str, value: str, *, param: str | None = None, status: int = 400) -> StripeError:
    """resource_missing: 404 when the object is the URL, 400 when it is a parameter."""
    message = f"No such {kind}: '{value}'"
    error = StripeError(
        status, "invalid_request_error", message, saved=True, code="resource_missing"
    )
    return _with_param(error, param)


def unexpected_state(message: str, *, code: str, param: str | None = None) -> StripeError:
    error = StripeError(400, "invalid_request_error", message, saved=True, code=code)
    return _with_param(error, param)


def unrecognized_url(method: str, path: str) -> StripeError:
    # Stripe answers an unknown method on a known path the same way: 404, not 405.
    return StripeError(
        404,
        "invalid_request_error",
        f"Unrecognized request URL ({method}: {path}). The simulator implements a subset "
        "of the API; see local/stripe_sim/__init__.py.",
    )


def api_error(message: str = "An unknown error occurred (simulated).") -> StripeError:
    return StripeError(500, "api_error", message)
