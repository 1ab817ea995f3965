"""Prometheus remote write 1.0 client: protobuf `WriteRequest`, snappy block, bounded retries.

A Lambda execution environment keeps its counters in memory, so every series carries
`instance` and `function`: two concurrent environments must never write different
cumulative values into one series. `instance` is a leased slot (`series_pool`, series scale
with peak concurrency) or, without a pool, a random id per environment (series grow with
environments ever started). Aggregate the label away in queries, e.g.

    sum without (instance, function) (rate(payment_gateway_payment_total[5m]))
    sum by (status) (rate(payment_gateway_http_requests_total[5m]))
    histogram_quantile(0.95,
        sum by (le) (rate(payment_gateway_payment_duration_seconds_bucket[5m])))

The WriteRequest is encoded by hand (the protobuf wire format of prompb is four tiny
messages): each series' label block is encoded once and cached, so a flush only encodes its
samples. `remote_write_pb` keeps the message classes for decoding in tests.
"""

from __future__ import annotations

import decimal
import math
import random
import re
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import cramjam
import requests

if TYPE_CHECKING:
    from payments.observability.settings import ObservabilitySettings

USER_AGENT = "payment-gateway-metrics/1.0"
HEADERS = {
    "Content-Encoding": "snappy",
    "Content-Type": "application/x-protobuf",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
    "User-Agent": USER_AGENT,
}
_AMP_HOST = re.compile(r"^aps-workspaces\.([a-z0-9-]+)\.amazonaws\.com$")
_BACKOFF_BASE_S = 0.02
_BACKOFF_MAX_S = 0.5

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Series:
    """One time series: labels sorted by name and unique; samples (value, timestamp ms)."""

    labels: Labels
    samples: tuple[tuple[float, int], ...]


@dataclass(frozen=True)
class Metadata:
    family: str
    type: int
    help: str
    unit: str


@dataclass(frozen=True)
class Outcome:
    ok: bool
    attempts: int
    detail: str  # status code or exception class; never the URL's userinfo or a header


def format_le(bound: float) -> str:
    """Format a bucket bound like Prometheus' Go clients (strconv 'g', shortest): 0.005, 1e+06."""
    if math.isinf(bound):
        return "+Inf" if bound > 0 else "-Inf"
    d = decimal.Decimal(repr(float(bound))).normalize()
    if d.is_zero():
        return "0"
    sign, digits, _ = d.as_tuple()
    exp = d.adjusted()
    prefix = "-" if sign else ""
    # Go's shortest 'g' switches to an exponent below 1e-4 and from 1e+06 up.
    if exp < -4 or exp >= 6:
        mantissa = str(digits[0]) + ("." + "".join(map(str, digits[1:])) if len(digits) > 1 else "")
        return f"{prefix}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    return format(d, "f")


def label_set(*parts: Mapping[str, str]) -> Labels:
    """Merge label maps (later wins), drop empty values as Prometheus does, sort by name."""
    merged: dict[str, str] = {}
    for part in parts:
        merged.update(part)
    return tuple(sorted((k, v) for k, v in merged.items() if v != ""))


def with_label(labels: Labels, name: str, value: str) -> Labels:
    """`labels` (sorted) with one more label, still sorted and unique."""
    return tuple(sorted((*((k, v) for k, v in labels if k != name), (name, value))))


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _text(number: int, text: str) -> bytes:
    return _field(number, text.encode("utf-8"))


_LABEL_CACHE: dict[Labels, bytes] = {}
_LABEL_CACHE_MAX = 20_000  # a bound, not a tuning knob: series are a few hundred


def _labels_block(labels: Labels) -> bytes:
    """TimeSeries.labels (field 1, repeated Label{name=1, value=2}), encoded once per series."""
    block = _LABEL_CACHE.get(labels)
    if block is None:
        block = b"".join(_field(1, _text(1, k) + _text(2, v)) for k, v in labels)
        if len(_LABEL_CACHE) >= _LABEL_CACHE_MAX:
            _LABEL_CACHE.clear()
        _LABEL_CACHE[labels] = block
    return block


_DOUBLE = struct.Struct("<d")


def _sample(value: float, timestamp: int) -> bytes:
    """Sample{value=1 (double), timestamp=2 (int64)} as TimeSeries.samples (field 2)."""
    body = b"\x09" + _DOUBLE.pack(value) + b"\x10" + _varint(timestamp & 0xFFFFFFFFFFFFFFFF)
    return _field(2, body)


def encode(series: Sequence[Series], metadata: Sequence[Metadata] = ()) -> bytes:
    """Serialize a WriteRequest and compress it with snappy *block* format (not framed)."""
    parts = []
    for s in series:
        body = _labels_block(s.labels) + b"".join(_sample(v, t) for v, t in s.samples)
        parts.append(_field(1, body))
    for md in metadata:
        # MetricMetadata{type=1 (enum), metric_family_name=2, help=4, unit=5} as field 3.
        body = b"\x08" + _varint(md.type) + _text(2, md.family) + _text(4, md.help)
        parts.append(_field(3, body + (_text(5, md.unit) if md.unit else b"")))
    return bytes(cramjam.snappy.compress_raw(b"".join(parts)))


def _sigv4_region(url: str, settings: ObservabilitySettings) -> str | None:
    """Region to sign for, or None when SigV4 is off (explicit flag, else AMP host match)."""
    host_match = _AMP_HOST.match(urlsplit(url).hostname or "")
    flag = settings.remote_write_sigv4
    if flag is False or (flag is None and not host_match):
        return None
    return (
        settings.remote_write_region
        or settings.region
        or (host_match.group(1) if host_match else "us-east-1")
    )


class Writer:
    """POSTs encoded WriteRequests. One per process: the Session keeps the connection warm."""

    def __init__(self) -> None:
        self._session = requests.Session()
        self._botocore_session: Any = None

    def _sign(self, url: str, body: bytes, region: str) -> dict[str, str]:
        # botocore is only imported when signing is needed: it is heavy for a cold start.
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.session import Session

        if self._botocore_session is None:
            self._botocore_session = Session()
        credentials = self._botocore_session.get_credentials()
        if credentials is None:
            raise RuntimeError("no AWS credentials for SigV4")
        aws_req = AWSRequest(method="POST", url=url, data=body, headers=dict(HEADERS))
        SigV4Auth(credentials.get_frozen_credentials(), "aps", region).add_auth(aws_req)
        return dict(aws_req.headers.items())

    def send(
        self, url: str, body: bytes, deadline: float, settings: ObservabilitySettings
    ) -> Outcome:
        """POST with retries on 5xx/429 until `deadline` (time.monotonic); fail fast when the
        receiver cannot be reached."""
        region = _sigv4_region(url, settings)
        attempts, detail = 0, "deadline"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Outcome(False, attempts, detail)
            attempts += 1
            retryable = True
            try:
                headers = self._sign(url, body, region) if region else dict(HEADERS)
                # No redirects: requests would turn a redirected POST into a bodiless GET.
                resp = self._session.post(
                    url,
                    data=body,
                    headers=headers,
                    timeout=(remaining, remaining),
                    allow_redirects=False,
                )
                resp.close()
                if 200 <= resp.status_code < 300:
                    return Outcome(True, attempts, str(resp.status_code))
                detail = str(resp.status_code)
                retryable = resp.status_code >= 500 or resp.status_code == 429
            except requests.ConnectionError as exc:
                # Refused or unreachable: it will not recover within a flush budget of
                # milliseconds, and the next flush resends the cumulative state anyway.
                return Outcome(False, attempts, type(exc).__name__)
            except requests.RequestException as exc:
                detail = type(exc).__name__
            except Exception as exc:  # signing / encoding bugs must not escape either
                return Outcome(False, attempts, type(exc).__name__)
            if not retryable:
                return Outcome(False, attempts, detail)
            # Full-jitter exponential backoff, but only if a retry still fits in the budget.
            backoff = random.uniform(0, min(_BACKOFF_MAX_S, _BACKOFF_BASE_S * 2**attempts))  # noqa: S311
            if time.monotonic() + backoff >= deadline:
                return Outcome(False, attempts, detail)
            time.sleep(backoff)
