"""local.moto_patches: transactions roll back per item, nothing is kept forever, parses cached."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from local import moto_patches
from local.aws import EmulatorHandle, start_emulator

TEMPLATE = """\
Resources:
  ItemsTable:
    Type: AWS::DynamoDB::Table
    Properties:
      TableName: items
      AttributeDefinitions:
        - {AttributeName: pk, AttributeType: S}
        - {AttributeName: sk, AttributeType: S}
        - {AttributeName: g, AttributeType: S}
      KeySchema: [{AttributeName: pk, KeyType: HASH}, {AttributeName: sk, KeyType: RANGE}]
      GlobalSecondaryIndexes:
        - IndexName: by_g
          KeySchema: [{AttributeName: g, KeyType: HASH}, {AttributeName: sk, KeyType: RANGE}]
          Projection: {ProjectionType: ALL}
"""


@pytest.fixture()
def emulator(tmp_path: Path) -> Iterator[EmulatorHandle]:
    (tmp_path / "template.yaml").write_text(TEMPLATE)
    handle = start_emulator(str(tmp_path / "template.yaml"), runtime=object())
    yield handle
    handle.stop()


def _key(pk: str) -> dict[str, Any]:
    return {"pk": {"S": pk}, "sk": {"S": "s"}}


def test_a_failed_transaction_restores_every_item_it_touched(emulator: EmulatorHandle) -> None:
    ddb = emulator.client("dynamodb")
    ddb.put_item(TableName="items", Item={**_key("a"), "n": {"N": "1"}})
    ddb.put_item(TableName="items", Item={**_key("b"), "n": {"N": "1"}})
    ddb.put_item(TableName="items", Item={**_key("c"), "n": {"N": "1"}})
    with pytest.raises(ClientError) as exc:
        ddb.transact_write_items(
            TransactItems=[
                {"Put": {"TableName": "items", "Item": {**_key("new"), "n": {"N": "9"}}}},
                {
                    "Update": {
                        "TableName": "items",
                        "Key": _key("a"),
                        "UpdateExpression": "SET n = :v",
                        "ExpressionAttributeValues": {":v": {"N": "2"}},
                    }
                },
                {"Delete": {"TableName": "items", "Key": _key("b")}},
                {
                    "ConditionCheck": {
                        "TableName": "items",
                        "Key": _key("c"),
                        "ConditionExpression": "n = :x",
                        "ExpressionAttributeValues": {":x": {"N": "5"}},
                    }
                },
            ]
        )
    assert exc.value.response["Error"]["Code"] == "TransactionCanceledException"

    def item(pk: str) -> Any:
        return ddb.get_item(TableName="items", Key=_key(pk)).get("Item")

    assert item("new") is None  # the put was undone
    assert item("a")["n"] == {"N": "1"}  # the update was undone
    assert item("b")["n"] == {"N": "1"}  # the delete was undone
    with pytest.raises(ClientError) as exc:  # two operations on one item: moto's other path
        ddb.transact_write_items(
            TransactItems=[
                {"Delete": {"TableName": "items", "Key": _key("a")}},
                {"Delete": {"TableName": "items", "Key": _key("a")}},
            ]
        )
    assert exc.value.response["Error"]["Code"] == "ValidationException"
    assert item("a")["n"] == {"N": "1"}
    ddb.transact_write_items(
        TransactItems=[
            {"Put": {"TableName": "items", "Item": {**_key("new"), "n": {"N": "9"}}}},
            {"Delete": {"TableName": "items", "Key": _key("b")}},
        ]
    )
    assert item("new")["n"] == {"N": "9"} and item("b") is None


def test_transactions_copy_no_table_and_moto_keeps_no_instances(
    emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moto.dynamodb.models.dynamo_type import Item
    from moto.dynamodb.models.table import Table

    # No housekeeping from the emulator's own requests during the test: it runs it below.
    monkeypatch.setattr(moto_patches, "_last_housekeeping", time.monotonic() + 3600)

    ddb = emulator.client("dynamodb")
    for i in range(50):
        ddb.put_item(TableName="items", Item=_key(f"seed-{i}"))
    tables_before = len(Table.instances_tracked)  # type: ignore[attr-defined]
    for i in range(5):
        ddb.transact_write_items(
            TransactItems=[{"Put": {"TableName": "items", "Item": _key(f"tx-{i}")}}]
        )
    assert len(Table.instances_tracked) == tables_before  # type: ignore[attr-defined]
    ddb.query(
        TableName="items",
        KeyConditionExpression="pk = :p",
        ExpressionAttributeValues={":p": {"S": "seed-1"}},
    )
    assert Item.instances_tracked  # type: ignore[attr-defined]  # moto's copies, kept...
    finished = threading.Thread(target=lambda: None)
    finished.start()
    finished.join()
    from moto.stepfunctions.parser.utils import TMP_THREADS

    TMP_THREADS.append(finished)
    later = time.monotonic() + 7200
    assert moto_patches.housekeeping(now=later)  # ...until housekeeping
    assert not Item.instances_tracked  # type: ignore[attr-defined]
    assert finished not in TMP_THREADS
    assert not moto_patches.housekeeping(now=later + 0.5)  # at most once a second


def test_definitions_are_parsed_once(emulator: EmulatorHandle) -> None:
    from moto.stepfunctions.parser.asl.parse.asl_parser import (
        AmazonStateLanguageParser,
        ASLParserException,
    )

    definition = json.dumps({"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}})
    first = AmazonStateLanguageParser.parse(definition)
    assert AmazonStateLanguageParser.parse(definition) is first
    for _ in range(2):  # an invalid definition raises every time (errors are not cached)
        with pytest.raises(ASLParserException):
            AmazonStateLanguageParser.parse('{"StartAt": ')
    sfn = emulator.client("stepfunctions")
    arn = sfn.create_state_machine(
        name="pass",
        definition=definition,
        type="EXPRESS",
        roleArn="arn:aws:iam::123456789012:role/x",
    )["stateMachineArn"]
    for value in (1, 2):  # a cached program still evaluates each execution on its own input
        out = sfn.start_sync_execution(stateMachineArn=arn, input=json.dumps({"v": value}))
        assert json.loads(out["output"]) == {"v": value}


def test_queries_answer_as_moto_does(emulator: EmulatorHandle) -> None:
    """The table's own key (one partition read) and a secondary index (every item, unsorted
    first): moto's answers, order, ranges, paging, filters and counts."""
    from moto.dynamodb.models.table import Table

    ddb = emulator.client("dynamodb")
    for pk in ("a", "b", "c"):
        for n in range(6):
            item = {"pk": {"S": pk}, "sk": {"S": f"s{n}"}, "n": {"N": str(n)}}
            if n % 2:  # half of them in the index, in three index partitions
                item["g"] = {"S": f"g{n % 3}"}
            ddb.put_item(TableName="items", Item=item)

    def query(**kwargs: Any) -> dict[str, Any]:
        out = ddb.query(TableName="items", **kwargs)
        out.pop("ResponseMetadata")
        return out

    cases: list[dict[str, Any]] = [
        {"KeyConditionExpression": "pk = :p", "ExpressionAttributeValues": {":p": {"S": "b"}}},
        {
            "KeyConditionExpression": "pk = :p AND sk BETWEEN :x AND :y",
            "ExpressionAttributeValues": {":p": {"S": "b"}, ":x": {"S": "s1"}, ":y": {"S": "s4"}},
            "ScanIndexForward": False,
        },
        {
            "KeyConditionExpression": "pk = :p AND begins_with(sk, :s)",
            "FilterExpression": "n > :two",
            "ExpressionAttributeValues": {":p": {"S": "c"}, ":s": {"S": "s"}, ":two": {"N": "2"}},
        },
        {
            "KeyConditionExpression": "pk = :p",
            "ExpressionAttributeValues": {":p": {"S": "a"}},
            "Limit": 4,
            "ExclusiveStartKey": {"pk": {"S": "a"}, "sk": {"S": "s0"}},
        },
        {
            "KeyConditionExpression": "pk = :p",
            "ExpressionAttributeValues": {":p": {"S": "a"}},
            "Select": "COUNT",
        },
        {"KeyConditionExpression": "pk = :p", "ExpressionAttributeValues": {":p": {"S": "zz"}}},
        {
            "IndexName": "by_g",
            "KeyConditionExpression": "g = :g",
            "ExpressionAttributeValues": {":g": {"S": "g1"}},
            "ScanIndexForward": False,
        },
        {
            "IndexName": "by_g",
            "KeyConditionExpression": "g = :g AND sk > :s",
            "ExpressionAttributeValues": {":g": {"S": "g0"}, ":s": {"S": "s1"}},
            "Limit": 2,
        },
    ]
    stored = ddb.scan(TableName="items", Select="COUNT")["Count"]  # (and the demo API key)
    patched = [query(**case) for case in cases]
    assert [r["Count"] for r in patched] == [6, 4, 3, 4, 6, 0, 3, 2]
    assert patched[1]["Items"][0]["sk"] == {"S": "s4"}  # descending
    assert patched[3]["LastEvaluatedKey"] == {"pk": {"S": "a"}, "sk": {"S": "s4"}}
    with pytest.MonkeyPatch.context() as undo:  # moto's own path, for comparison
        undo.setattr(Table, "query", Table.query.__wrapped__)  # type: ignore[attr-defined]
        assert [query(**case) for case in cases] == patched
    # A Query of a partition that does not exist creates no empty one
    assert ddb.scan(TableName="items", Select="COUNT")["Count"] == stored
    assert all(len(bucket) for t in _tables(emulator) for bucket in t.items.values())


def _tables(emulator: EmulatorHandle) -> list[Any]:
    from moto.dynamodb.models import dynamodb_backends

    from local.template import ACCOUNT, REGION

    return list(dynamodb_backends[ACCOUNT][REGION].tables.values())
