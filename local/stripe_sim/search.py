"""A subset of Stripe's search query language, for PaymentIntents.

Supported: `metadata['key']:'value'`, `status:'succeeded'`, `currency:'usd'`,
`amount:1000` / `amount>1000` (also <, >=, <=), `created>1700000000`, clauses joined with
`AND`. Anything else (OR, negation, substring `~`, other fields, unquoted strings) is a 400
that names what is unsupported, rather than a silently different result.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable

from local.stripe_sim.errors import Json, StripeError, invalid

Predicate = Callable[[Json], bool]

_CLAUSE = re.compile(
    r"""\s*(?P<field>metadata\[(?:'[^']*'|"[^"]*")\]|[A-Za-z_.]+)"""
    r"""\s*(?P<op>:|>=|<=|>|<)\s*(?P<value>'[^']*'|"[^"]*"|-?\d+|[A-Za-z_][\w.-]*)\s*"""
)
_AND = re.compile(r"AND\s+")
_STRING_FIELDS = frozenset({"status", "currency"})
_NUMBER_FIELDS = frozenset({"amount", "created"})
_OPS: dict[str, Callable[[int, int], bool]] = {
    ":": operator.eq,
    ">": operator.gt,
    "<": operator.lt,
    ">=": operator.ge,
    "<=": operator.le,
}


def compile_query(query: str) -> Predicate:
    if not query.strip():
        raise _unsupported(query, "the query is empty")
    clauses: list[Predicate] = []
    pos = 0
    while True:
        m = _CLAUSE.match(query, pos)
        if m is None:
            raise _unsupported(query, _why(query[pos:]))
        clauses.append(_clause(query, m.group("field"), m.group("op"), m.group("value")))
        pos = m.end()
        if pos == len(query):
            return lambda obj: all(c(obj) for c in clauses)
        joined = _AND.match(query, pos)
        if joined is None:
            raise _unsupported(query, _why(query[pos:]))
        pos = joined.end()


def _clause(query: str, field: str, op: str, raw: str) -> Predicate:
    quoted = raw[0] in "'\""
    if field.startswith("metadata["):
        key = field[len("metadata[") + 1 : -2]
        if op != ":" or not quoted:
            raise _unsupported(query, "metadata takes field:'value'")
        value = raw[1:-1]
        return lambda obj: (obj.get("metadata") or {}).get(key) == value
    if field in _STRING_FIELDS:
        if op != ":" or not quoted:
            raise _unsupported(query, f"{field} takes {field}:'value'")
        text = raw[1:-1]
        return lambda obj: obj.get(field) == text
    if field in _NUMBER_FIELDS:
        if not raw.lstrip("-").isdigit():
            raise _unsupported(query, f"{field} takes an unquoted integer")
        number, compare = int(raw), _OPS[op]
        return lambda obj: isinstance(obj.get(field), int) and compare(obj[field], number)
    raise _unsupported(query, f"the field {field!r} is not searchable in the simulator")


def _why(rest: str) -> str:
    word = rest.strip().split(" ", 1)[0]
    if word in {"OR", "or"}:
        return "OR is not supported (only AND)"
    if word.startswith("-") or word.upper() == "NOT":
        return "negation is not supported"
    if "~" in rest.split(" ", 1)[0]:
        return "substring match (~) is not supported"
    return f"cannot parse {rest.strip()[:40]!r}"


def _unsupported(query: str, reason: str) -> StripeError:
    return invalid(
        f"Invalid or unsupported search query {query!r}: {reason}. The simulator supports "
        "metadata['key']:'value', status:'…', currency:'…', amount and created comparisons, "
        "joined with AND.",
        code="parameter_invalid",
        param="query",
    )
