"""Stripe's form encoding (bracket notation) and parameter checks."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from local.stripe_sim.errors import Json, invalid, missing_param

_KEY = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])*)")
_PART = re.compile(r"\[([^\[\]]*)\]")
MAX_METADATA_KEYS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 50, 40, 500


def parse_form(items: Iterable[tuple[str, str]]) -> Json:
    """metadata[k]=v -> {"metadata": {"k": v}}; a[]=x and a[0]=x (what stripe-python
    sends) -> lists; deeper nesting (a[0][b]=v) as well."""
    out: Json = {}
    for key, value in items:
        m = _KEY.fullmatch(key)
        if m is None:
            raise invalid(f"Invalid parameter name: {key}.", code="parameter_unknown", param=key)
        path = [m.group(1), *_PART.findall(m.group(2))]
        node: Any = out
        for i, part in enumerate(path[:-1]):
            nxt: Any = [] if path[i + 1] == "" else {}
            node = _child(node, part, nxt, key)
        _assign(node, path[-1], value, key)
    parsed: Json = _lists(out)
    return parsed


def _child(node: Any, part: str, default: Any, key: str) -> Any:
    if isinstance(node, list):
        node.append(default)
        return default
    existing = node.setdefault(part, default)
    if not isinstance(existing, dict | list):
        raise invalid(f"Invalid nesting for parameter {key}.", code="parameter_invalid", param=key)
    return existing


def _assign(node: Any, part: str, value: str, key: str) -> None:
    if isinstance(node, list):
        node.append(value)
    elif isinstance(node.get(part), dict | list):
        raise invalid(f"Invalid nesting for parameter {key}.", code="parameter_invalid", param=key)
    else:
        node[part] = value


def _lists(value: Any) -> Any:
    """Indexed keys (a[0], a[1]) become a list, in index order."""
    if isinstance(value, list):
        return [_lists(v) for v in value]
    if not isinstance(value, dict):
        return value
    converted = {k: _lists(v) for k, v in value.items()}
    if converted and all(k.isdigit() for k in converted):
        return [converted[k] for k in sorted(converted, key=int)]
    return converted


def reject_unknown(params: Json, allowed: Iterable[str]) -> None:
    known = set(allowed)
    for name in params:
        if name in known:
            continue
        if name == "expand":
            # Expansion changes the response's shape; refuse it rather than ignore it.
            raise invalid(
                "expand is not supported by the simulator.", code="parameter_unknown", param=name
            )
        raise invalid(f"Received unknown parameter: {name}", code="parameter_unknown", param=name)


def positive_int(params: Json, name: str, *, required: bool = True) -> int | None:
    raw = params.get(name)
    if raw is None:
        if required:
            raise missing_param(name)
        return None
    if not isinstance(raw, str) or not raw.isdigit() or int(raw) <= 0:
        raise invalid(
            f"Invalid positive integer: {name}.", code="parameter_invalid_integer", param=name
        )
    return int(raw)


def string(params: Json, name: str, *, required: bool = False) -> str | None:
    raw = params.get(name)
    if raw is None or raw == "":
        if required:
            raise missing_param(name)
        return None
    if not isinstance(raw, str):
        raise invalid(f"Invalid string: {name}.", code="parameter_invalid_string", param=name)
    return raw


def choice(params: Json, name: str, options: Iterable[str]) -> str | None:
    value = string(params, name)
    allowed = sorted(options)
    if value is not None and value not in allowed:
        raise invalid(
            f"Invalid {name}: must be one of {', '.join(allowed)}.",
            code="parameter_invalid",
            param=name,
        )
    return value


def boolean(params: Json, name: str) -> bool:
    raw = params.get(name)
    if raw is None or raw == "false":
        return False
    if raw == "true":
        return True
    raise invalid(f"Invalid boolean: {name}.", code="parameter_invalid", param=name)


def metadata(params: Json) -> dict[str, str]:
    raw = params.get("metadata")
    if raw is None or raw == "":
        return {}
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise invalid("Invalid metadata: must be a hash of strings.", code="parameter_invalid")
    if len(raw) > MAX_METADATA_KEYS:
        raise invalid(
            f"Invalid metadata: at most {MAX_METADATA_KEYS} keys.",
            code="parameter_invalid",
            param="metadata",
        )
    for k, v in raw.items():
        if len(k) > MAX_METADATA_KEY or len(v) > MAX_METADATA_VALUE:
            raise invalid(
                f"Invalid metadata[{k[:MAX_METADATA_KEY]}]: keys up to {MAX_METADATA_KEY} "
                f"characters, values up to {MAX_METADATA_VALUE}.",
                code="parameter_invalid",
                param=f"metadata[{k[:MAX_METADATA_KEY]}]",
            )
    return {str(k): str(v) for k, v in raw.items()}


def string_list(params: Json, name: str) -> list[str] | None:
    raw = params.get(name)
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
        raise invalid(f"Invalid array: {name}.", code="parameter_invalid", param=name)
    return list(raw)
