"""A thin typed layer over one DynamoDB table through an injected boto3 client.

Items cross this boundary as plain dicts of Python values (numbers come back as int). A lost
condition becomes `StateConflict` carrying the item as the winner left it, never a crash. A page
that cannot be read (one item in a shape the parser refuses) is read again item by item, so one
bad item is skipped with a log line instead of hiding every other item of the page.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError
from botocore.parsers import ResponseParserError
from pydantic import ValidationError

from control_plane.errors import StateConflict

log = logging.getLogger("control_plane.store")

Item = dict[str, Any]

# What reading a reply or an item raises when it is malformed: botocore's parser, the
# deserializer on a type it does not know, a number that is not one.
UNREADABLE: tuple[type[Exception], ...] = (
    ResponseParserError,
    TypeError,
    ValueError,
    KeyError,
    ArithmeticError,
)
# ...and what mapping an item onto an API object raises when the item is corrupt.
UNREADABLE_OBJECT: tuple[type[Exception], ...] = (ValidationError, *UNREADABLE)

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()
BATCH_WRITE_MAX = 25
BATCH_GET_MAX = 100
# DynamoDB cancels a transaction that overlaps another one on an item (reason
# `TransactionConflict`) and refuses a single write to an item a transaction holds
# (`TransactionConflictException`); botocore retries neither. Both are retried here with
# jittered exponential backoff: the other writer finishes within milliseconds.
CONFLICT_TRIES = 8
CONFLICT_BACKOFF_S = 0.02
CONFLICT_BACKOFF_MAX_S = 0.5
# How a retry waits; the fleet simulation charges its virtual clock instead.
pause: Callable[[float], None] = time.sleep


def _backoff(attempt: int) -> None:
    ceiling = min(CONFLICT_BACKOFF_MAX_S, CONFLICT_BACKOFF_S * 2**attempt)
    pause(random.uniform(ceiling / 2, ceiling))


def _conflicted(exc: ClientError) -> bool:
    """A transaction or write that lost to another transaction on the same item, and nothing
    else (a failed condition is an answer, not a conflict)."""
    error = exc.response.get("Error", {})
    if error.get("Code") == "TransactionConflictException":
        return True
    if error.get("Code") != "TransactionCanceledException":
        return False
    codes = {reason.get("Code") for reason in exc.response.get("CancellationReasons", [])}
    return "TransactionConflict" in codes and "ConditionalCheckFailed" not in codes


def _with_retries(call: Callable[[], Any]) -> Any:
    for attempt in range(CONFLICT_TRIES):
        try:
            return call()
        except ClientError as exc:
            if not _conflicted(exc) or attempt == CONFLICT_TRIES - 1:
                raise
            _backoff(attempt)
    raise AssertionError("unreachable")


def _storable(value: Any) -> Any:
    """DynamoDB numbers are decimals: floats (timings) go through their shortest repr."""
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, dict):
        return {key: _storable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_storable(item) for item in value]
    return value


def to_attrs(values: Mapping[str, Any]) -> dict[str, Any]:
    return {name: _serializer.serialize(_storable(value)) for name, value in values.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def from_attrs(attrs: Mapping[str, Any]) -> Item:
    return {name: _plain(_deserializer.deserialize(value)) for name, value in attrs.items()}


def _is_condition_failure(exc: ClientError) -> bool:
    return bool(exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException")


class Table:
    def __init__(self, client: Any, name: str) -> None:
        self.client, self.name = client, name

    def get(
        self,
        key: Mapping[str, str],
        *,
        consistent: bool = True,
        attributes: Iterable[str] | None = None,
    ) -> Item | None:
        """The item, or only `attributes` of it (a projection: the others are never parsed)."""
        kwargs: dict[str, Any] = {
            "TableName": self.name,
            "Key": to_attrs(key),
            "ConsistentRead": consistent,
        }
        if attributes is not None:
            names = {f"#a{i}": name for i, name in enumerate(attributes)}
            kwargs["ProjectionExpression"] = ", ".join(names)
            kwargs["ExpressionAttributeNames"] = names
        reply = self.client.get_item(**kwargs)
        return from_attrs(reply["Item"]) if "Item" in reply else None

    def get_many(self, keys: Sequence[Mapping[str, str]]) -> list[Item | None]:
        """The items of `keys`, in their order (None where there is none): BatchGetItem, 100
        keys a call, unprocessed keys (a throttled partition) asked again after a backoff.
        Strongly consistent, as `get` is by default."""
        found: dict[tuple[str, str], Item] = {}
        unique = list({(k["pk"], k["sk"]): k for k in keys}.values())
        for start in range(0, len(unique), BATCH_GET_MAX):
            pending: dict[str, Any] = {
                self.name: {
                    "Keys": [to_attrs(k) for k in unique[start : start + BATCH_GET_MAX]],
                    "ConsistentRead": True,
                }
            }
            for attempt in range(CONFLICT_TRIES):
                reply = self.client.batch_get_item(RequestItems=pending)
                for attrs in reply.get("Responses", {}).get(self.name, []):
                    item = from_attrs(attrs)
                    found[(str(item["pk"]), str(item["sk"]))] = item
                pending = reply.get("UnprocessedKeys") or {}
                if not pending:
                    break
                _backoff(attempt)
            else:
                left = len(pending.get(self.name, {}).get("Keys", []))
                raise RuntimeError(f"BatchGetItem left {left} keys unprocessed after retries")
        return [found.get((k["pk"], k["sk"])) for k in keys]

    def put(
        self,
        item: Mapping[str, Any],
        *,
        condition: str | None = None,
        names: Mapping[str, str] | None = None,
        values: Mapping[str, Any] | None = None,
    ) -> None:
        kwargs: dict[str, Any] = {"TableName": self.name, "Item": to_attrs(item)}
        if condition:
            kwargs["ConditionExpression"] = condition
            kwargs["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
            if names:
                kwargs["ExpressionAttributeNames"] = dict(names)
            if values:
                kwargs["ExpressionAttributeValues"] = to_attrs(values)
        try:
            _with_retries(lambda: self.client.put_item(**kwargs))
        except ClientError as exc:
            if _is_condition_failure(exc):
                raise StateConflict(_old_item(exc)) from exc
            raise

    def put_versioned(self, item: Mapping[str, Any], *, seen: int) -> bool:
        """Write `item` with version `seen + 1` if the stored one is still at `seen` (or absent):
        optimistic locking for the single-item states two ticks may both write. False when
        another writer got there first."""
        try:
            self.put(
                {**item, "version": seen + 1},
                condition="attribute_not_exists(pk) OR version = :seen",
                values={":seen": seen},
            )
        except StateConflict:
            return False
        return True

    def update(
        self,
        key: Mapping[str, str],
        expression: str,
        *,
        condition: str | None = None,
        names: Mapping[str, str] | None = None,
        values: Mapping[str, Any] | None = None,
        returns: str = "ALL_NEW",
    ) -> Item:
        """Apply `expression` under `condition`; return the item as it is afterwards (or only
        the attributes it changed, with `returns="UPDATED_NEW"`)."""
        kwargs: dict[str, Any] = {
            "TableName": self.name,
            "Key": to_attrs(key),
            "UpdateExpression": expression,
            "ReturnValues": returns,
        }
        if condition:
            kwargs["ConditionExpression"] = condition
            kwargs["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
        if names:
            kwargs["ExpressionAttributeNames"] = dict(names)
        if values:
            kwargs["ExpressionAttributeValues"] = to_attrs(values)
        try:
            reply = _with_retries(lambda: self.client.update_item(**kwargs))
        except ClientError as exc:
            if _is_condition_failure(exc):
                raise StateConflict(_old_item(exc)) from exc
            raise
        return from_attrs(reply.get("Attributes", {}))

    def delete(
        self,
        key: Mapping[str, str],
        *,
        condition: str | None = None,
        names: Mapping[str, str] | None = None,
        values: Mapping[str, Any] | None = None,
    ) -> None:
        kwargs: dict[str, Any] = {"TableName": self.name, "Key": to_attrs(key)}
        if condition:
            kwargs["ConditionExpression"] = condition
        if names:
            kwargs["ExpressionAttributeNames"] = dict(names)
        if values:
            kwargs["ExpressionAttributeValues"] = to_attrs(values)
        try:
            _with_retries(lambda: self.client.delete_item(**kwargs))
        except ClientError as exc:
            if _is_condition_failure(exc):
                raise StateConflict(None) from exc
            raise

    def transact(self, operations: list[dict[str, Any]]) -> None:
        """All or nothing. A failed condition in any part raises `TransactionConflict` with
        the index of each part that failed; a conflict with another transaction is retried."""
        try:
            _with_retries(lambda: self.client.transact_write_items(TransactItems=operations))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
                raise
            reasons = exc.response.get("CancellationReasons", [])
            failed = [
                index
                for index, reason in enumerate(reasons)
                if reason.get("Code") == "ConditionalCheckFailed"
            ]
            if not failed:
                raise
            raise TransactionConflict(failed) from exc

    def put_many(self, items: Iterable[Mapping[str, Any]], *, per_s: float | None = None) -> int:
        """Unconditional puts, 25 per call, unprocessed ones retried. Returns items written."""
        return self.write_many(puts=items, per_s=per_s)

    def write_many(
        self,
        *,
        puts: Iterable[Mapping[str, Any]] = (),
        deletes: Iterable[Mapping[str, str]] = (),
        per_s: float | None = None,
    ) -> int:
        """Unconditional puts and deletes, 25 per call (no order between them, no key twice),
        unprocessed ones retried, at most `per_s` requests a second when given. Returns the
        requests written."""
        requests = [{"PutRequest": {"Item": to_attrs(item)}} for item in puts] + [
            {"DeleteRequest": {"Key": to_attrs(key)}} for key in deletes
        ]
        written = 0
        started = time.time()
        for start in range(0, len(requests), BATCH_WRITE_MAX):
            written += self._write_batch(requests[start : start + BATCH_WRITE_MAX])
            if per_s:
                ahead = written / per_s - (time.time() - started)
                if ahead > 0:
                    pause(ahead)
        return written

    def _write_batch(self, requests: list[dict[str, Any]]) -> int:
        """Unprocessed items (a throttled partition) are sent again after a backoff, as AWS
        asks; after CONFLICT_TRIES rounds the error says how many are left."""
        pending = {self.name: requests}
        for attempt in range(CONFLICT_TRIES):
            reply = self.client.batch_write_item(RequestItems=pending)
            pending = reply.get("UnprocessedItems") or {}
            if not pending:
                return len(requests)
            _backoff(attempt)
        left = len(pending.get(self.name, []))
        raise RuntimeError(f"BatchWriteItem left {left} items unprocessed after retries")

    def query_page(
        self,
        *,
        index: str | None,
        key_name: str,
        key_value: str,
        limit: int,
        newest_first: bool = True,
        start_key: Mapping[str, str] | None = None,
        sort_condition: tuple[str, str, str] | None = None,
        attributes: Iterable[str] | None = None,
        consistent: bool = False,
    ) -> tuple[list[Item], bool]:
        """One page of a partition (up to `limit` items) and whether more follow. Items that
        cannot be read are left out (each with a log line naming its key). `consistent` reads
        the table's partition strongly (indexes have no such read)."""
        names = {"#k": key_name}
        values: dict[str, Any] = {":k": key_value}
        expression = "#k = :k"
        if sort_condition:
            sort_name, operator, sort_value = sort_condition
            names["#s"] = sort_name
            values[":s"] = sort_value
            if operator == "begins_with":
                expression += " AND begins_with(#s, :s)"
            else:
                expression += f" AND #s {operator} :s"
        kwargs: dict[str, Any] = {
            "TableName": self.name,
            "KeyConditionExpression": expression,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": to_attrs(values),
            "ScanIndexForward": not newest_first,
            "Limit": limit + 1,  # one more tells whether another page exists
        }
        if index:
            kwargs["IndexName"] = index
        elif consistent:
            kwargs["ConsistentRead"] = True
        if start_key:
            kwargs["ExclusiveStartKey"] = to_attrs(start_key)
        if attributes is not None:
            projected = {f"#p{i}": name for i, name in enumerate(attributes)}
            kwargs["ProjectionExpression"] = ", ".join(projected)
            names.update(projected)
        try:
            items = self._pages(kwargs, limit)
        except UNREADABLE as exc:
            log.error(
                "unreadable page: reading its items one by one",
                extra={"partition": key_value, "index": index, "error": repr(exc)[:500]},
            )
            items = self._readable_items(kwargs, limit)
        return items[:limit], len(items) > limit

    def _pages(self, kwargs: dict[str, Any], limit: int) -> list[Item]:
        """Up to `limit + 1` items, page after page."""
        items: list[Item] = []
        while True:
            reply = self.client.query(**kwargs)
            items.extend(from_attrs(item) for item in reply.get("Items", []))
            last = reply.get("LastEvaluatedKey")
            if len(items) > limit or not last:
                return items
            kwargs = {**kwargs, "ExclusiveStartKey": last}

    def _readable_items(self, kwargs: dict[str, Any], limit: int) -> list[Item]:
        """The same query for the keys alone, then each item on its own: one that still cannot
        be read is skipped and named in the log; the next tick or page finds the others."""
        names = {**kwargs["ExpressionAttributeNames"], "#pk": "pk", "#sk": "sk"}
        key_only = {**kwargs, "ProjectionExpression": "#pk, #sk", "ExpressionAttributeNames": names}
        items: list[Item] = []
        for key in self._pages(key_only, limit):
            try:
                item = self.get({"pk": key["pk"], "sk": key["sk"]})
            except UNREADABLE as exc:
                log.error(
                    "unreadable item skipped",
                    extra={"pk": key["pk"], "sk": key["sk"], "error": repr(exc)[:500]},
                )
                continue
            if item is not None:
                items.append(item)
        return items

    def count(self, *, index: str | None, key_name: str, key_value: str, cap: int) -> int:
        """Items in a partition (`Select=COUNT`: none crosses the wire), stopping once `cap` is
        reached, so a huge queue costs a bounded read."""
        kwargs: dict[str, Any] = {
            "TableName": self.name,
            "KeyConditionExpression": "#k = :k",
            "ExpressionAttributeNames": {"#k": key_name},
            "ExpressionAttributeValues": to_attrs({":k": key_value}),
            "Select": "COUNT",
        }
        if index:
            kwargs["IndexName"] = index
        total = 0
        while total < cap:
            reply = self.client.query(**kwargs)
            total += int(reply.get("Count", 0))
            last = reply.get("LastEvaluatedKey")
            if not last:
                break
            kwargs["ExclusiveStartKey"] = last
        return min(total, cap)


class TransactionConflict(Exception):
    def __init__(self, failed_parts: list[int]):
        super().__init__(f"transaction condition failed in parts {failed_parts}")
        self.failed_parts = failed_parts


def _old_item(exc: ClientError) -> Item | None:
    old = exc.response.get("Item")
    return from_attrs(old) if old else None
