"""What makes moto unfit for a long-running local stack, fixed from the outside.

Measured under load (the stack grew to 14 GB RSS after ~17k requests, and slower with it):

1. moto's `BaseModel.__new__` appends every model instance ever created to its class's
   `instances_tracked` list (for moto's dashboard) and nothing ever empties it in server
   mode. DynamoDB's GetItem/Query deep-copy their results into new `Item`s, and every
   TransactWriteItems deep-copies *each whole table it touches* (its rollback copy): all of
   them are kept forever. `housekeeping()` calls moto's own `reset_model_data()` (at most
   once a second) and drops finished threads from the Step Functions interpreter's
   `TMP_THREADS` (two or more per execution, also never emptied).
2. That whole-table copy also makes every transaction O(table size): with a few thousand
   payments each TransactWriteItems costs seconds. `transact_write_items` here snapshots only
   the items the transaction names and restores them on failure (every DynamoDB request is
   serialised by the emulator's lock, so no other write can interleave).
3. moto's Step Functions interpreter re-parses the ASL definition with ANTLR and rebuilds
   its component tree (JSONPath parsers included) on every execution: ~0.25 s of CPU each.
   Both depend only on the definition text and are cached: the components keep no
   per-execution state (everything lives in the `Environment`; moto's Map state already runs
   one component tree for many iterations at once).
   The JSONPath expressions it evaluates are parsed again on every use (a new ply parser
   each time, ~2 ms, twenty per payment): parsed expressions are immutable, so cached too.
4. ...and it creates a new boto3 client for every Lambda task (~60 ms each, four per payment)
   that connects to "localhost" (::1 first, where nothing listens). One client per
   (service, region), thread-safe, kept, against 127.0.0.1, with a pool as large as the
   concurrency the stack allows.
5. moto's DynamoDB Query on a table's own key lists *every* item of the table and sorts them
   (`Table.all_items()`), then keeps those of the partition asked for: O(n log n) per Query,
   under the emulator's one DynamoDB lock. Every refund, risk check and metrics flush
   queries a partition: with 20,000 items one such Query took ~1 s (18 ms now), and
   `make soak` got slower the longer it ran. Such a Query now reads just its partition, and
   one of a secondary index (the reconciler's, every 5 s) still goes through every item but
   without that sort (a Query sorts what it keeps by every key: the same items, same order).

`apply()` is idempotent and changes nothing observable through the AWS APIs.
"""

from __future__ import annotations

import copy
import functools
import threading
import time
from typing import Any

_applied = False
_housekeeping_lock = threading.Lock()
_last_housekeeping = 0.0
HOUSEKEEPING_INTERVAL_S = 1.0


def apply() -> None:
    global _applied  # noqa: PLW0603 - process-wide, like moto's own state
    if _applied:
        return
    _patch_transactions()
    _patch_partition_query()
    _patch_asl_parser()
    _patch_task_clients()
    _patch_jsonpath()
    _applied = True


def housekeeping(now: float | None = None) -> bool:
    """Free what moto keeps for no one; runs at most once per interval (True if it ran)."""
    global _last_housekeeping  # noqa: PLW0603
    now = time.monotonic() if now is None else now
    if now - _last_housekeeping < HOUSEKEEPING_INTERVAL_S:
        return False
    if not _housekeeping_lock.acquire(blocking=False):
        return False
    try:
        _last_housekeeping = now
        from moto.core.model_instances import reset_model_data
        from moto.stepfunctions.parser.utils import TMP_THREADS

        reset_model_data()
        TMP_THREADS[:] = [t for t in TMP_THREADS if t.is_alive()]
        return True
    finally:
        _housekeeping_lock.release()


# --- DynamoDB: item-level rollback for TransactWriteItems ---------------------------------

_no_table_copy = threading.local()


def _patch_transactions() -> None:
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.models.table import Table

    original = DynamoDBBackend.transact_write_items

    def table_deepcopy(self: Table, memo: dict[int, Any]) -> Table:
        if getattr(_no_table_copy, "active", False):
            return self  # moto's whole-table rollback copy: we keep item snapshots instead
        clone: Table = object.__new__(type(self))
        memo[id(self)] = clone
        for name, value in self.__dict__.items():
            setattr(clone, name, copy.deepcopy(value, memo))
        return clone

    @functools.wraps(original)
    def transact_write_items(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
        snapshots = _snapshot(self, transact_items)
        _no_table_copy.active = True
        try:
            original(self, transact_items)
        except BaseException:
            _restore(snapshots)
            raise
        finally:
            _no_table_copy.active = False

    Table.__deepcopy__ = table_deepcopy  # type: ignore[attr-defined]
    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]


def _snapshot(
    backend: Any, transact_items: list[dict[str, Any]]
) -> list[tuple[Any, Any, Any, Any]]:
    """(table, hash key, range key, deep copy of the item or None) for every named item."""
    from moto.dynamodb.models.dynamo_type import DynamoType

    out: list[tuple[Any, Any, Any, Any]] = []
    for entry in transact_items:
        for op in entry.values():
            table = backend.tables.get(op.get("TableName")) if isinstance(op, dict) else None
            if table is None:
                continue
            key = op.get("Key") or op.get("Item") or {}
            if table.hash_key_attr not in key:
                continue
            range_raw = key.get(table.range_key_attr) if table.range_key_attr else None
            if table.range_key_attr and range_raw is None:
                continue  # moto rejects the request before it writes anything
            hash_key = DynamoType(key[table.hash_key_attr])
            range_key = DynamoType(range_raw) if range_raw is not None else None
            current = table.get_item(hash_key, range_key)
            out.append((table, hash_key, range_key, copy.deepcopy(current)))
    return out


def _restore(snapshots: list[tuple[Any, Any, Any, Any]]) -> None:
    for table, hash_key, range_key, item in reversed(snapshots):
        if range_key is None:
            if item is None:
                table.items.pop(hash_key, None)
            else:
                table.items[hash_key] = item
            continue
        bucket = table.items[hash_key]
        if item is None:
            bucket.pop(range_key, None)
            if not bucket:
                table.items.pop(hash_key, None)
        else:
            bucket[range_key] = item


# --- DynamoDB: a Query of the table's own key reads one partition ------------------------------

_partition = threading.local()


def _patch_partition_query() -> None:
    import inspect

    from moto.dynamodb.models.table import Table

    original_query = Table.query
    original_all_items = Table.all_items
    signature = inspect.signature(original_query)

    def all_items(self: Table) -> list[Any]:
        if getattr(_partition, "table", None) is not self:
            return original_all_items(self)
        # Inside a Query, which sorts what it keeps by the table's (and the index's) keys:
        # moto's sort of every item first decides nothing, so the items come unsorted.
        if _partition.hash_key is None:  # a secondary index: every item, as moto reads them
            buckets = list(self.items.values())
        else:  # the table's own key: its partition (.get: `items` is a defaultdict)
            bucket = self.items.get(_partition.hash_key)
            buckets = [] if bucket is None else [bucket]
        if not self.range_key_attr:
            return buckets
        return [item for bucket in buckets for item in bucket.values()]

    @functools.wraps(original_query)
    def query(self: Table, *args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(self, *args, **kwargs)
        by_index = bool(bound.arguments.get("index_name"))
        _partition.table = self
        _partition.hash_key = None if by_index else bound.arguments.get("hash_key")
        try:
            return original_query(self, *args, **kwargs)
        finally:
            _partition.table = _partition.hash_key = None

    Table.all_items = all_items  # type: ignore[method-assign]
    Table.query = query  # type: ignore[method-assign]


# --- Step Functions: parse each definition once ----------------------------------------------


def _patch_asl_parser() -> None:
    from antlr4 import CommonTokenStream, InputStream
    from moto.stepfunctions.parser.asl.antlr.runtime.ASLLexer import ASLLexer
    from moto.stepfunctions.parser.asl.antlr.runtime.ASLParser import ASLParser
    from moto.stepfunctions.parser.asl.parse import asl_parser
    from moto.stepfunctions.parser.asl.parse.preprocessor import Preprocessor

    @functools.lru_cache(maxsize=64)
    def parse(definition: str) -> tuple[Any, Any]:
        listener: Any = asl_parser.SyntaxErrorListener()  # type: ignore[no-untyped-call]
        parser: Any = ASLParser(CommonTokenStream(ASLLexer(InputStream(definition))))
        parser.removeErrorListeners()
        parser.addErrorListener(listener)
        tree = parser.state_machine()
        if listener.errors:  # raised, so never cached
            raise asl_parser.ASLParserException(errors=listener.errors)
        return Preprocessor().visit(tree), tree

    asl_parser.AmazonStateLanguageParser.parse = staticmethod(parse)  # type: ignore[method-assign]


def _patch_task_clients() -> None:
    import boto3
    from botocore.config import Config
    from moto.core.models import botocore_stubber
    from moto.settings import moto_server_port
    from moto.stepfunctions.parser.asl.component.common.timeouts.timeout import TimeoutSeconds
    from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils
    from moto.stepfunctions.parser.asl.utils import boto_client

    @functools.lru_cache(maxsize=32)
    def cached(region: str, service: str, endpoint: str | None) -> Any:
        config = Config(
            parameter_validation=False,
            retries={"max_attempts": 0, "total_max_attempts": 1},
            connect_timeout=TimeoutSeconds.DEFAULT_TIMEOUT_SECONDS,
            read_timeout=TimeoutSeconds.DEFAULT_TIMEOUT_SECONDS,
            max_pool_connections=64,
        )
        kwargs = {"endpoint_url": endpoint} if endpoint else {}
        factory: Any = boto3.client
        return factory(
            service,
            region_name=region,
            aws_access_key_id="ak",
            aws_secret_access_key="sk",  # noqa: S106 - moto accepts any
            config=config,
            **kwargs,
        )

    def boto_client_for(region: str, service: str, state_credentials: Any = None) -> Any:
        stubbed = botocore_stubber.enabled  # in-process mocks: moto intercepts, no endpoint
        endpoint = None if stubbed else f"http://127.0.0.1:{moto_server_port()}"
        return cached(region, service, endpoint)

    boto_client.boto_client_for = boto_client_for
    lambda_eval_utils.boto_client_for = boto_client_for  # type: ignore[attr-defined]


def _patch_jsonpath() -> None:
    import jsonpath_ng
    import jsonpath_ng.ext
    from moto.stepfunctions.parser.asl.component.common.path import result_path
    from moto.stepfunctions.parser.asl.utils import json_path

    ext: Any = jsonpath_ng.ext
    json_path.parse = functools.lru_cache(maxsize=1024)(ext.parse)  # type: ignore[attr-defined]
    result_path.parse = functools.lru_cache(maxsize=1024)(jsonpath_ng.parse)  # type: ignore[attr-defined]
