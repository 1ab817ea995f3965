"""Redaction of secrets and personal data before they reach logs or span attributes.

Two rules, applied recursively to dicts, lists and strings:

* by key: a value whose key names a secret (``secret``, ``api_key``, ``authorization``,
  ``signature``/``x-signature``, ``password``, ``token``, ``payment_method``, ``card``,
  ``cookie``, ``cvc``...) becomes ``"[REDACTED]"`` whatever it is;
* by value: inside any string, Stripe secret/restricted keys (``sk_live_``, ``sk_test_``,
  ``rk_...``), webhook secrets (``whsec_``), client secrets, payment-method and card tokens
  (``pm_``, ``tok_``, ``card_``), bearer tokens, card numbers (13-19 digits), 64-hex HMAC
  signatures are replaced by ``[REDACTED]``; e-mail addresses are masked (``j***@example.com``).

`redact_attributes` is what the observability layer applies to the attributes of *recording*
spans (an unsampled span never gets attributes, so nothing is redacted for it); it skips the
values that cannot carry a secret: booleans, floats, integers below 13 digits and the
attributes the layer derives itself (`TRUSTED_ATTRIBUTES`: route template, method, status,
Lambda request id, step name). The logging
formatter applies `redact` to every log record (message and extra keys).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REDACTED = "[REDACTED]"

# Substrings of a normalised key (lower case, '-' and ' ' -> '_') that mark a secret.
_SENSITIVE_KEY_PARTS = (
    "secret",
    "api_key",
    "apikey",
    "authorization",
    "signature",
    "password",
    "passwd",
    "token",
    "payment_method",
    "card",
    "cvc",
    "cvv",
    "cookie",
    "private_key",
    "credential",
    "session_key",
)

_VALUE_PATTERNS: tuple[re.Pattern[str], ...] = (
    # Stripe secret / restricted keys, webhook secrets, client secrets.
    re.compile(r"\b(?:sk|rk)_(?:live|test)_[0-9A-Za-z]+"),
    re.compile(r"\brk_[0-9A-Za-z_]{8,}"),
    re.compile(r"\bwhsec_[0-9A-Za-z]+"),
    re.compile(r"\b(?:pi|seti)_[0-9A-Za-z]+_secret_[0-9A-Za-z]+"),
    # Payment-method, token and card objects (pm_card_visa, tok_visa, card_1N...).
    re.compile(r"\b(?:pm|tok)_[0-9A-Za-z_]+"),
    re.compile(r"\b(?:card|src)_[0-9A-Za-z]{10,}"),
    # HTTP credentials.
    re.compile(r"(?i)\b(?:bearer|basic)\s+[0-9A-Za-z._~+/=-]+"),
    # HMAC-SHA256 signatures (and any other 64-hex secret).
    re.compile(r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{64}(?![0-9A-Fa-f])"),
    # Card numbers: 13-19 contiguous digits.
    re.compile(r"(?<![0-9A-Za-z])\d{13,19}(?![0-9A-Za-z])"),
)
# Card numbers written in groups ("4242 4242 4242 4242", "4242-4242-..."), Luhn-checked.
_GROUPED_CARD = re.compile(r"(?<![0-9A-Za-z])\d{4}(?:[ -]\d{3,6}){2,4}(?![0-9A-Za-z])")
# key=value / "key": "value" pairs inside free text ("password=hunter2").
_INLINE_SECRET = re.compile(
    r"(?i)\b((?:x[-_])?(?:secret|api[-_]?key|authorization|signature|password|passwd|token|"
    r"stripe[-_]signature)\"?\s*[:=]\s*\"?)([^\s\",;&]+)"
)
_EMAIL = re.compile(r"\b([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)\b")

_MIN_INTERESTING = 6  # shorter strings cannot hold anything above


def is_sensitive_key(key: str) -> bool:
    """True when a value stored under `key` must never be logged or traced."""
    normalised = key.lower().replace("-", "_").replace(" ", "_")
    return any(part in normalised for part in _SENSITIVE_KEY_PARTS)


def _luhn_ok(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _grouped_card(match: re.Match[str]) -> str:
    digits = re.sub(r"[ -]", "", match.group(0))
    if 13 <= len(digits) <= 19 and _luhn_ok(digits):
        return REDACTED
    return match.group(0)


def redact_text(text: str) -> str:
    """`text` with secrets replaced by [REDACTED] and e-mail addresses masked."""
    if len(text) < _MIN_INTERESTING:
        return text
    text = _INLINE_SECRET.sub(lambda m: m.group(1) + REDACTED, text)
    for pattern in _VALUE_PATTERNS:
        text = pattern.sub(REDACTED, text)
    text = _GROUPED_CARD.sub(_grouped_card, text)
    if "@" in text:
        text = _EMAIL.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", text)
    return text


def redact(value: Any, key: str | None = None) -> Any:
    """A redacted copy of `value`: containers walked, other objects turned into redacted str."""
    if key is not None and is_sensitive_key(key):
        return REDACTED if value not in (None, "") else value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact(item) for item in value)
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return value
    if isinstance(value, int):
        if 10**12 <= abs(value) < 10**19 and _luhn_ok(str(abs(value))):
            return REDACTED
        return value
    # Anything else (exception objects, Decimal, datetime...) is serialised as its str().
    return redact_text(str(value))


# Attributes whose values the layer derives itself, never from a caller's payload: the route
# template, the upper-cased method, the status code, Lambda's request id, the cold-start flag,
# the state-machine step name. Everything else from an event is redacted (defence in depth).
TRUSTED_ATTRIBUTES = frozenset(
    {
        "http.request.method",
        "http.route",
        "http.response.status_code",
        "faas.coldstart",
        "faas.invocation_id",
        "step",
    }
)


def _cannot_hold_secret(value: Any) -> bool:
    # A card number needs 13 digits: smaller integers, floats and booleans are safe as is.
    return isinstance(value, bool | float) or (isinstance(value, int) and abs(value) < 10**12)


def redact_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """Span attributes safe to export: sensitive keys and secret-looking values redacted."""
    return {
        key: value
        if key in TRUSTED_ATTRIBUTES or _cannot_hold_secret(value)
        else redact(value, key)
        for key, value in attributes.items()
    }
