"""Object collections: immediately consistent reads and lists, and a lagging search index."""

from __future__ import annotations

import base64
import copy
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from local.stripe_sim.errors import Json, invalid

MAX_VERSIONS = 32
Predicate = Callable[[Json], bool]


@dataclass
class _Entry:
    obj: Json
    seq: int
    # (monotonic time of the change, snapshot): what the search index holds, oldest first
    versions: list[tuple[float, Json]] = field(default_factory=list)


class Collection:
    """One object kind (payment_intent, refund, event), in creation order."""

    def __init__(self, kind: str, clock: Callable[[], float], *, searchable: bool = False):
        self.kind = kind
        self._clock = clock
        self._searchable = searchable
        self._seq = itertools.count(1)
        self._entries: dict[str, _Entry] = {}

    def add(self, obj: Json) -> Json:
        entry = _Entry(obj, next(self._seq))
        self._entries[obj["id"]] = entry
        self._index(entry)
        return obj

    def get(self, object_id: str) -> Json | None:
        entry = self._entries.get(object_id)
        return entry.obj if entry else None

    def changed(self, object_id: str) -> None:
        """Record a change for the search index (reads see it at once anyway)."""
        self._index(self._entries[object_id])

    def oldest_first(self) -> Iterator[Json]:
        return (e.obj for e in self._entries.values())

    def newest_first(self) -> Iterator[Json]:
        return (e.obj for e in reversed(self._entries.values()))

    def page(
        self,
        *,
        limit: int,
        starting_after: str | None = None,
        ending_before: str | None = None,
        where: Predicate | None = None,
    ) -> tuple[list[Json], bool]:
        """Stripe's cursor pagination over newest-first order: (data, has_more)."""
        rows = [o for o in self.newest_first() if where is None or where(o)]
        if starting_after is not None:
            rows = rows[self._position(rows, starting_after, "starting_after") + 1 :]
            return _copies(rows[:limit]), len(rows) > limit
        if ending_before is not None:
            rows = rows[: self._position(rows, ending_before, "ending_before")]
            return _copies(rows[-limit:]), len(rows) > limit
        return _copies(rows[:limit]), len(rows) > limit

    def _position(self, rows: list[Json], cursor: str, param: str) -> int:
        if cursor not in self._entries:
            raise invalid(f"No such {self.kind}: '{cursor}'", code="resource_missing", param=param)
        for i, row in enumerate(rows):
            if row["id"] == cursor:
                return i
        # A cursor outside the filtered rows: place it by creation order, as Stripe does.
        seq = self._entries[cursor].seq
        newer = sum(1 for r in rows if self._entries[r["id"]].seq > seq)
        return newer if param == "ending_before" else newer - 1

    def search(
        self, *, where: Predicate, limit: int, page: str | None, delay_seconds: float
    ) -> tuple[list[Json], str | None]:
        """Search the index as it was `delay_seconds` ago: (data, next_page)."""
        cutoff = self._clock() - delay_seconds
        after = _decode_page(page) if page else None
        hits: list[tuple[int, Json]] = []
        for entry in reversed(self._entries.values()):
            if after is not None and entry.seq >= after:
                continue
            indexed = _indexed(entry, cutoff)
            if indexed is not None and where(indexed):
                hits.append((entry.seq, indexed))
                if len(hits) > limit:
                    break
        data = [copy.deepcopy(obj) for _, obj in hits[:limit]]
        next_page = _encode_page(hits[limit - 1][0]) if len(hits) > limit else None
        return data, next_page

    def _index(self, entry: _Entry) -> None:
        if not self._searchable:
            return
        entry.versions.append((self._clock(), copy.deepcopy(entry.obj)))
        del entry.versions[:-MAX_VERSIONS]


def _indexed(entry: _Entry, cutoff: float) -> Json | None:
    """The newest snapshot the index had caught up with by `cutoff`, if any."""
    for changed_at, snapshot in reversed(entry.versions):
        if changed_at <= cutoff:
            return snapshot
    return None


def _copies(rows: list[Json]) -> list[Json]:
    return [copy.deepcopy(r) for r in rows]


def _encode_page(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


def _decode_page(page: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(page + "=" * (-len(page) % 4)).decode()
        prefix, _, seq = raw.partition(":")
        if prefix == "seq" and seq.isdigit():
            return int(seq)
    except (ValueError, UnicodeDecodeError):
        pass
    raise invalid(
        "Invalid page: use next_page from a previous search.",
        code="parameter_invalid",
        param="page",
    )
