"""CloudWatch Embedded Metric Format documents (one JSON object per stdout line).

Spec: https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html
A document's directive may name at most 100 metrics and each metric at most 100 values, and
dimension values are read from the document root, so entries are grouped by their exact
dimension names and values and split into several documents where needed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

MAX_METRICS_PER_DOCUMENT = 100
MAX_VALUES_PER_METRIC = 100
# One encoder, built once (json.dumps with options builds a new JSONEncoder per call).
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True)
class Entry:
    """Values of one metric for one combination of dimension values, since the last flush."""

    name: str
    unit: str  # a CloudWatch unit: Count, Seconds, Bytes, None
    dimensions: tuple[tuple[str, str], ...]  # ordered (name, value); defines the dimension set
    values: Sequence[float]


def build(namespace: str, entries: Iterable[Entry], timestamp_ms: int) -> list[dict[str, Any]]:
    """Documents for `entries`; each metric family keeps a single dimension set."""
    groups: dict[tuple[tuple[str, str], ...], list[Entry]] = {}
    for entry in entries:
        if entry.values:
            groups.setdefault(entry.dimensions, []).append(entry)

    docs: list[dict[str, Any]] = []
    for dimensions, group in groups.items():
        # Chunk each metric's values; chunk k of every metric shares document k (then split
        # again if a group ever carries more than 100 metric names).
        chunks: list[list[tuple[Entry, Sequence[float]]]] = []
        for entry in group:
            for k, start in enumerate(range(0, len(entry.values), MAX_VALUES_PER_METRIC)):
                if k == len(chunks):
                    chunks.append([])
                chunks[k].append((entry, entry.values[start : start + MAX_VALUES_PER_METRIC]))
        for chunk in chunks:
            for start in range(0, len(chunk), MAX_METRICS_PER_DOCUMENT):
                docs.append(
                    _document(
                        namespace,
                        dimensions,
                        chunk[start : start + MAX_METRICS_PER_DOCUMENT],
                        timestamp_ms,
                    )
                )
    return docs


def _document(
    namespace: str,
    dimensions: tuple[tuple[str, str], ...],
    metrics: Sequence[tuple[Entry, Sequence[float]]],
    timestamp_ms: int,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [
                {
                    "Namespace": namespace,
                    "Dimensions": [[name for name, _ in dimensions]],
                    "Metrics": [{"Name": e.name, "Unit": e.unit} for e, _ in metrics],
                }
            ],
        }
    }
    # CloudWatch rejects empty or over-long (> 1024 chars) dimension values.
    doc.update((name, (value or "none")[:1024]) for name, value in dimensions)
    for entry, values in metrics:
        # A single value is written as a number: CloudWatch accepts both, and it reads better.
        doc[entry.name] = values[0] if len(values) == 1 else list(values)
    return doc


def write(docs: Iterable[dict[str, Any]], path: str = "") -> None:
    """Print each document on its own line; Lambda ships stdout lines to CloudWatch Logs.

    `path` (EMF_OUTPUT_FILE, local stack only) appends them to a file instead, keeping a
    developer's terminal for the function logs.
    """
    lines = [_ENCODER.encode(doc) for doc in docs]
    if not lines:
        return
    text = "\n".join(lines) + "\n"
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(text)
        return
    sys.stdout.write(text)
    sys.stdout.flush()
