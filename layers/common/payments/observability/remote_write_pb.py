"""Prometheus remote-write 1.0 messages (prometheus/prompb), built from a descriptor in code.

There is no protoc in the build, so the `.proto` is expressed as a FileDescriptorProto. Only the
fields remote write 1.0 needs are declared (exemplars and native histograms are left out; a
receiver ignores absent fields). The classes are built on first use and cached, and they live
in a private descriptor pool so they can never clash with another `prometheus.*` registration.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto

# MetricMetadata.MetricType values from prompb/types.proto.
METRIC_TYPE_COUNTER = 1
METRIC_TYPE_GAUGE = 2
METRIC_TYPE_HISTOGRAM = 3


class Messages(NamedTuple):
    write_request: Any
    time_series: Any
    label: Any
    sample: Any
    metric_metadata: Any


def _field(
    msg: descriptor_pb2.DescriptorProto,
    name: str,
    number: int,
    ftype: int,
    *,
    repeated: bool = False,
    type_name: str = "",
) -> None:
    f = msg.field.add(name=name, number=number, type=ftype)
    f.label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
    if type_name:
        f.type_name = type_name


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto(
        name="payments/prompb_remote.proto", package="prometheus", syntax="proto3"
    )
    wr = fd.message_type.add(name="WriteRequest")
    _field(wr, "timeseries", 1, _F.TYPE_MESSAGE, repeated=True, type_name=".prometheus.TimeSeries")
    wr.reserved_range.add(start=2, end=3)
    _field(
        wr, "metadata", 3, _F.TYPE_MESSAGE, repeated=True, type_name=".prometheus.MetricMetadata"
    )

    ts = fd.message_type.add(name="TimeSeries")
    _field(ts, "labels", 1, _F.TYPE_MESSAGE, repeated=True, type_name=".prometheus.Label")
    _field(ts, "samples", 2, _F.TYPE_MESSAGE, repeated=True, type_name=".prometheus.Sample")

    label = fd.message_type.add(name="Label")
    _field(label, "name", 1, _F.TYPE_STRING)
    _field(label, "value", 2, _F.TYPE_STRING)

    sample = fd.message_type.add(name="Sample")
    _field(sample, "value", 1, _F.TYPE_DOUBLE)
    _field(sample, "timestamp", 2, _F.TYPE_INT64)

    md = fd.message_type.add(name="MetricMetadata")
    enum = md.enum_type.add(name="MetricType")
    for number, name in enumerate(
        [
            "UNKNOWN",
            "COUNTER",
            "GAUGE",
            "HISTOGRAM",
            "GAUGEHISTOGRAM",
            "SUMMARY",
            "INFO",
            "STATESET",
        ]
    ):
        enum.value.add(name=name, number=number)
    _field(md, "type", 1, _F.TYPE_ENUM, type_name=".prometheus.MetricMetadata.MetricType")
    _field(md, "metric_family_name", 2, _F.TYPE_STRING)
    _field(md, "help", 4, _F.TYPE_STRING)
    _field(md, "unit", 5, _F.TYPE_STRING)
    return fd


@functools.cache
def messages() -> Messages:
    """The message classes, built once per process on first use (no import-time cost)."""
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_file_descriptor())

    def cls(name: str) -> Any:
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"prometheus.{name}"))

    return Messages(
        write_request=cls("WriteRequest"),
        time_series=cls("TimeSeries"),
        label=cls("Label"),
        sample=cls("Sample"),
        metric_metadata=cls("MetricMetadata"),
    )
