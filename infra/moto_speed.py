"""moto's DynamoDB at the size of a fleet: queries that read one partition, transactions that
journal the items they touch, answers written as the JSON they already are (and S3 requests
that do not reload a module each, and a server that does not list its package per request).

moto answers every Query by walking every item of the table (then filtering on the key), backs
every TransactWriteItems up with a deep copy of the whole table, and writes each answer through
a generic serializer that walks botocore's shape of every attribute value (a few milliseconds
per item). All are fine for a unit test's dozen items and hopeless for a local fleet or
`bench/sim_scale.py`, where the table holds tens of thousands of chunk items and a chunk moves by
transaction: each call costs O(table). These patches keep moto's own parsing, conditions,
updates and answers, and change only where the candidates come from (the partition, or the GSI
partition, kept in a small index updated on every write), what a failed transaction restores
(the items it touched), and how the item operations' answers are written (DynamoDB's JSON
protocol is the result dict itself, so `json.dumps` writes the same body).

Apply once per process, before the first request (`enable()`); it is idempotent.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from weakref import WeakKeyDictionary

_applied = False
_local = threading.local()
_Key = tuple[Any, Any]


class _GsiIndex:
    """Which items sit in which GSI partition: (index name, hash value) → item keys."""

    def __init__(self, table: Any) -> None:
        self.buckets: dict[tuple[str, Any], dict[_Key, None]] = {}
        self.where: dict[_Key, list[tuple[str, Any]]] = {}
        self.hash_attrs = {
            index.name: next(k["AttributeName"] for k in index.schema if k["KeyType"] == "HASH")
            for index in table.global_indexes
        }
        for item in _original_all_items(table):
            self.place(table, (item.hash_key, item.range_key))

    def place(self, table: Any, key: _Key) -> None:
        for bucket in self.where.pop(key, ()):
            members = self.buckets.get(bucket)
            if members is not None:
                members.pop(key, None)
        item = _stored(table, key)
        if item is None:
            return
        placed = []
        for name, attr in self.hash_attrs.items():
            value = item.attrs.get(attr)
            if value is not None:
                bucket = (name, value)
                self.buckets.setdefault(bucket, {})[key] = None
                placed.append(bucket)
        self.where[key] = placed

    def members(self, table: Any, name: str, value: Any) -> list[Any]:
        items = []
        for key in self.buckets.get((name, value), {}):
            item = _stored(table, key)
            if item is not None:
                items.append(item)
        return items


_indexes: WeakKeyDictionary[Any, _GsiIndex] = WeakKeyDictionary()
_original_all_items: Any = None


def _stored(table: Any, key: _Key) -> Any:
    hash_value, range_value = key
    partition = table.items.get(hash_value)
    if partition is None:
        return None
    if table.range_key_attr is None:
        return partition
    return partition.get(range_value)


def _index(table: Any) -> _GsiIndex:
    index = _indexes.get(table)
    if index is None:
        index = _indexes[table] = _GsiIndex(table)
    return index


def _reindex(table: Any, hash_value: Any, range_value: Any) -> None:
    if table in _indexes:
        _indexes[table].place(table, (hash_value, range_value))


@contextmanager
def _candidates(table: Any, items: list[Any] | None) -> Iterator[None]:
    previous = getattr(_local, "candidates", None)
    _local.candidates = (table, items) if items is not None else None
    try:
        yield
    finally:
        _local.candidates = previous


def _table_candidates(table: Any, hash_key: Any, index_name: str | None, conditions: Any) -> Any:
    if index_name is None:
        if hash_key is None or table.range_key_attr is None:
            return None
        return list(table.items.get(hash_key, {}).values())
    index = _index(table)
    if index_name not in index.hash_attrs or not conditions:
        return None  # a local index, or a key condition this shortcut does not know
    attr = index.hash_attrs[index_name]
    values = [value for name, value in conditions if name == attr]
    if len(values) != 1:
        return None
    return index.members(table, index_name, values[0])


def enable() -> None:
    """Patch moto's DynamoDB (in this process) as the module docstring says."""
    global _applied, _original_all_items
    if _applied:
        return
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.models.table import Table

    _original_all_items = Table.all_items
    original_query = Table.query
    original_put = Table.put_item
    original_delete = Table.delete_item
    original_update = DynamoDBBackend.update_item

    def all_items(self: Any) -> list[Any]:
        override = getattr(_local, "candidates", None)
        if override is not None and override[0] is self:
            return list(override[1])
        return list(_original_all_items(self))

    def query(self: Any, hash_key: Any, *args: Any, **kwargs: Any) -> Any:
        index_name = kwargs.get("index_name", args[6] if len(args) > 6 else None)
        conditions = kwargs.get("hash_key_conditions")
        items = _table_candidates(self, hash_key, index_name, conditions)
        with _candidates(self, items):
            return original_query(self, hash_key, *args, **kwargs)

    def put_item(self: Any, *args: Any, **kwargs: Any) -> Any:
        item = original_put(self, *args, **kwargs)
        _reindex(self, item.hash_key, item.range_key)
        return item

    def delete_item(self: Any, hash_key: Any, range_key: Any) -> Any:
        item = original_delete(self, hash_key, range_key)
        _reindex(self, hash_key, range_key)
        return item

    def update_item(self: Any, table_name: str, key: dict[str, Any], *args: Any, **kw: Any) -> Any:
        table = self.get_table(table_name)
        hash_value, range_value = self.get_keys_value(table, key)
        try:
            return original_update(self, table_name, key, *args, **kw)
        finally:
            _reindex(table, hash_value, range_value)

    Table.all_items = all_items
    Table.query = query
    Table.put_item = put_item
    Table.delete_item = delete_item
    DynamoDBBackend.update_item = update_item
    DynamoDBBackend.transact_write_items = _transact_write_items
    _fast_answers()
    _s3_urls_once()
    _moto_modules_once()
    _applied = True


def _moto_modules_once() -> None:
    """moto's server lists its own package directory (a `stat` per service, some 150) on every
    request to tell whether the Host header names a service; the list never changes."""
    import moto.backends as backends

    modules = tuple(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: modules


def _s3_urls_once() -> None:
    """moto reloads its S3 URL module on every S3 request (to follow a custom-endpoint variable
    set at run time, which nothing here sets): one import serves them all."""
    import moto.s3.urls as urls
    from moto.s3.models import S3Backend

    S3Backend._url_module = property(lambda self: urls)


# Operations whose answer is items and keys only: no timestamps or blobs for the serializer to
# convert, so the result dict is the body.
_PLAIN_ANSWERS = frozenset(
    {
        "GetItem",
        "PutItem",
        "UpdateItem",
        "DeleteItem",
        "Query",
        "Scan",
        "BatchGetItem",
        "BatchWriteItem",
        "TransactWriteItems",
        "TransactGetItems",
    }
)


def _fast_answers() -> None:
    from moto.dynamodb.responses import DynamoHandler

    original = DynamoHandler.serialized

    def serialized(self: Any, action_result: Any) -> Any:
        result = action_result.result
        if isinstance(result, dict) and self._get_action() in _PLAIN_ANSWERS:
            headers = dict(self.response_headers)
            headers.update({"Content-Type": "application/x-amz-json-1.0", "status": 200})
            return 200, headers, json.dumps(result)
        return original(self, action_result)

    DynamoHandler.serialized = serialized


def _transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
    """moto's TransactWriteItems, with a journal of the touched items instead of a copy of
    every table: the same checks, the same order, the same errors."""
    from moto.dynamodb.exceptions import (
        ConditionalCheckFailed,
        MockValidationException,
        MultipleTransactionsException,
        TooManyTransactionsException,
        TransactionCanceledException,
        TransactWriteSingleOpException,
    )

    if len(transact_items) > 100:
        raise TooManyTransactionsException()
    journal: list[tuple[Any, Any, Any, Any]] = []
    seen: set[tuple[str, str]] = set()
    errors: list[tuple[Any, Any, Any]] = []
    for entry in transact_items:
        if len(entry) > 1:
            raise TransactWriteSingleOpException
        failed_item: list[dict[str, Any] | None] = [None]
        try:
            _apply_one(self, entry, seen, journal, failed_item)
            errors.append((None, None, None))
        except (MultipleTransactionsException, MockValidationException):
            _rollback(journal)
            raise
        except ConditionalCheckFailed as exc:
            errors.append(("ConditionalCheckFailed", str(exc.message), failed_item[0]))
        except Exception as exc:  # moto's own catch-all: reported as the item's reason
            errors.append((type(exc).__name__, str(exc), failed_item[0]))
    if any(code is not None for code, _, _ in errors):
        _rollback(journal)
        raise TransactionCanceledException(errors)


def _apply_one(
    backend: Any,
    entry: dict[str, Any],
    seen: set[tuple[str, str]],
    journal: list[tuple[Any, Any, Any, Any]],
    failed_item: list[dict[str, Any] | None],
) -> None:
    from moto.dynamodb.exceptions import ConditionalCheckFailed, MultipleTransactionsException
    from moto.dynamodb.models import get_filter_expression

    op_type, op = next(iter(entry.items()))
    if op_type not in {"ConditionCheck", "Put", "Delete", "Update"}:
        raise ValueError("Unsupported transaction operation")
    table_name = op["TableName"]
    table = backend.get_table(table_name)
    if op_type == "Put":
        key = {table.hash_key_attr: op["Item"][table.hash_key_attr]}
        if table.range_key_attr is not None:
            key[table.range_key_attr] = op["Item"][table.range_key_attr]
    else:
        key = op["Key"]
    unique = (str(table_name), str(dict(sorted(key.items()))))
    if unique in seen:
        raise MultipleTransactionsException()
    seen.add(unique)
    names = op.get("ExpressionAttributeNames")
    values = op.get("ExpressionAttributeValues")
    condition = op.get("ConditionExpression")
    current = backend.get_item(table_name, key)
    if condition is not None and not get_filter_expression(condition, names, values).expr(current):
        if op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" and current:
            failed_item[0] = current.to_json()["Attributes"]
        raise ConditionalCheckFailed(item=failed_item[0])
    if op_type == "ConditionCheck":
        return
    hash_value, range_value = backend.get_keys_value(table, key)
    journal.append((table, hash_value, range_value, copy.deepcopy(current)))
    expressions = {
        "condition_expression": condition,
        "expression_attribute_names": names,
        "expression_attribute_values": values,
    }
    if op_type == "Put":
        backend.put_item(table_name, op["Item"], **expressions)
    elif op_type == "Delete":
        backend.delete_item(table_name, key, **expressions)
    else:
        backend.update_item(
            table_name, key, update_expression=op["UpdateExpression"], **expressions
        )


def _rollback(journal: list[tuple[Any, Any, Any, Any]]) -> None:
    for table, hash_value, range_value, before in reversed(journal):
        if before is None:
            if _stored(table, (hash_value, range_value)) is not None:
                table.delete_item(hash_value, range_value)
        else:
            if table.range_key_attr is None:
                table.items[hash_value] = before
            else:
                table.items[hash_value][range_value] = before
            _reindex(table, hash_value, range_value)
