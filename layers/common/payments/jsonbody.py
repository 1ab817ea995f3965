"""Request bodies: bytes in, a JSON object or the contract's 4xx out (SPEC §2).

Everything is refused before `json.loads` could misread it (a repeated key) or blow up on
it (5,000 levels of nesting raised RecursionError, a 500).
"""

from __future__ import annotations

import json
import re
from typing import Any

from payments.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType

MAX_BODY_BYTES = 32 * 1024
MAX_JSON_DEPTH = 32


def parse_json_object(body: bytes, content_type: str | None) -> dict[str, Any]:
    """A request body as a JSON object, or the contract's 4xx for it (SPEC §2).

    Checked in this order, each before anything is parsed or stored: size (413), presence
    (400), media type (415), UTF-8, nesting depth, then JSON itself with duplicate keys and
    the non-standard NaN/Infinity refused (400 invalid_request).
    """
    if len(body) > MAX_BODY_BYTES:
        raise PayloadTooLarge()
    if not body:
        raise invalid_body("A JSON object body is required.", "required")
    if not is_json_media_type(content_type):
        raise UnsupportedMediaType()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise invalid_body("The body is not valid UTF-8.", "not UTF-8") from None
    if nesting_depth(text, stop_above=MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise invalid_body(
            f"The body is nested deeper than {MAX_JSON_DEPTH} levels.",
            f"nested deeper than {MAX_JSON_DEPTH} levels",
        )
    try:
        value = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except _DuplicateKey as dup:
        raise InvalidRequest(
            "The body repeats a key.", details=[{"field": dup.field, "issue": "duplicate key"}]
        ) from None
    except json.JSONDecodeError as err:
        issue = f"malformed JSON at line {err.lineno} column {err.colno}"
        raise invalid_body("The body is not valid JSON.", issue) from None
    except ValueError:  # NaN/Infinity, or an integer beyond Python's digit limit
        raise invalid_body("The body is not valid JSON.", "malformed JSON") from None
    if not isinstance(value, dict):
        raise invalid_body("The body must be a JSON object.", "must be an object")
    return value


def is_json_media_type(content_type: str | None) -> bool:
    """`application/json`, optionally with `charset=utf-8` (JSON is UTF-8: RFC 8259)."""
    if not content_type:
        return False
    media_type, *params = (part.strip() for part in content_type.split(";"))
    if media_type.lower() != "application/json":
        return False
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() != "utf-8":
            return False
    return True


_SIGNIFICANT = re.compile(r'["\\\[\]{}]')


def nesting_depth(text: str, *, stop_above: int | None = None) -> int:
    """How deeply arrays/objects nest in JSON text, brackets inside strings ignored.

    Linear in the text (it jumps between brackets, quotes and backslashes), so it can run
    on any input before `json.loads`, whose recursion would blow up on deep nesting.
    """
    depth = deepest = 0
    in_string = False
    escaped_at = -1
    for match in _SIGNIFICANT.finditer(text):
        pos, char = match.start(), match.group()
        if pos == escaped_at:
            continue
        if in_string:
            if char == "\\":
                escaped_at = pos + 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if stop_above is not None and deepest > stop_above:
                break
        elif char in "]}":
            depth -= 1
    return deepest


class _DuplicateKey(ValueError):
    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Refuse a repeated key: RFC 8259 leaves its meaning open, and taking the last one
    silently turned `{"amount": 1, "amount": 600000}` into a 600000 charge."""
    value: dict[str, Any] = {}
    for key, item in pairs:
        if key in value:
            raise _DuplicateKey(_field_name(key))
        value[key] = item
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _field_name(name: str) -> str:
    """A client-supplied key as it may appear in an error: bounded, never the whole input."""
    return name if len(name) <= 64 else name[:61] + "..."


def invalid_body(message: str, issue: str) -> InvalidRequest:
    return InvalidRequest(message, details=[{"field": "body", "issue": issue}])
