"""The meter: every AWS call the control plane makes, counted and charged to the virtual clock,
and DynamoDB's capacity billed as DynamoDB bills it.

- Calls: a `before-call` hook on boto3's default session counts each call by service and
  operation for whoever makes it (`actor`: the control plane, or the simulated workers' own
  presigned transfers) and charges its latency (`LATENCY_S`) to the current invocation.
- Units: moto's DynamoDB backend is wrapped so that each read and write is billed in read units
  (4 KB, strongly consistent) and write units (1 KB; twice inside a transaction) to its
  partition key, and each write to every GSI partition it enters, leaves or changes (a key
  change is a delete and a put), per virtual second. A key past 1,000 WCU or 3,000 RCU in one
  second counts a throttle (AWS "key range throughput exceeded").
- Conflicts: a transaction that touches an item another invocation's transaction touched less
  than `conflict_window_s` before is cancelled with `TransactionConflict`, and a single write to
  such an item answers `TransactionConflictException`, as DynamoDB does while the other one is
  in progress.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from infra.sim.clock import Clock

WCU_LIMIT = 1000
RCU_LIMIT = 3000
# Modelled round trips from a Lambda in the same region (not measured here).
LATENCY_S = {
    "dynamodb": 0.005,
    "dynamodb.TransactWriteItems": 0.015,
    "dynamodb.BatchWriteItem": 0.01,
    "s3": 0.02,
    "s3.UploadPartCopy": 0.05,
    "s3.CompleteMultipartUpload": 0.05,
    "sqs": 0.01,
    "lambda": 0.02,
    "scheduler": 0.02,
}


@dataclass
class KeyLoad:
    second: int = -1
    units: float = 0.0
    peak: float = 0.0
    total: float = 0.0
    throttled: int = 0

    def add(self, at: float, units: float, limit: int) -> None:
        second = int(at)
        if second != self.second:
            self.second, self.units = second, 0.0
        self.units += units
        self.total += units
        self.peak = max(self.peak, self.units)
        if self.units > limit:
            self.throttled += 1


@dataclass
class Meter:
    clock: Clock
    conflict_window_s: float = 0.02
    actor: str = "control_plane"
    calls: Counter[str] = field(default_factory=Counter)
    worker_calls: Counter[str] = field(default_factory=Counter)
    writes: dict[str, KeyLoad] = field(default_factory=lambda: defaultdict(KeyLoad))
    reads: dict[str, KeyLoad] = field(default_factory=lambda: defaultdict(KeyLoad))
    wru: float = 0.0
    rru: float = 0.0
    conflicts: int = 0
    max_item_bytes: dict[str, int] = field(default_factory=dict)
    _tx_items: dict[tuple[str, str], tuple[float, int]] = field(default_factory=dict)
    _in_tx: bool = False

    # --- calls -----------------------------------------------------------------------------

    def install(self) -> Meter:
        import boto3

        boto3.setup_default_session()
        assert boto3.DEFAULT_SESSION is not None
        boto3.DEFAULT_SESSION.events.register("before-call", self._before_call)
        _wrap_dynamodb(self)
        return self

    def _before_call(self, **kwargs: Any) -> None:
        _, service, operation = str(kwargs.get("event_name", "")).split(".", 2)
        name = f"{service}.{operation}"
        if self.actor != "control_plane":
            self.worker_calls[name] += 1
            return
        self.calls[name] += 1
        self.clock.charge(LATENCY_S.get(name, LATENCY_S.get(service, 0.01)))

    # --- units -----------------------------------------------------------------------------

    def bill_write(self, key: str, size: int) -> None:
        if self.actor != "control_plane":
            return
        units = max(1, math.ceil(size / 1024)) * (2 if self._in_tx else 1)
        self.wru += units
        self.writes[key].add(self.clock.now, units, WCU_LIMIT)

    def bill_read(self, key: str, size: int) -> None:
        if self.actor != "control_plane":
            return
        units = max(1, math.ceil(size / 4096))
        self.rru += units
        self.reads[key].add(self.clock.now, units, RCU_LIMIT)

    def note_size(self, pk: str, size: int) -> None:
        prefix = pk.split("#", 1)[0]
        if size > self.max_item_bytes.get(prefix, 0):
            self.max_item_bytes[prefix] = size

    def check_conflicts(self, keys: list[tuple[str, str]]) -> list[bool]:
        """Which of a transaction's items another invocation's transaction holds now."""
        run = id(self.clock.current)
        now = self.clock.now
        conflicting = []
        for key in keys:
            last = self._tx_items.get(key)
            conflicting.append(
                last is not None and last[1] != run and now - last[0] < self.conflict_window_s
            )
        if not any(conflicting):
            for key in keys:
                self._tx_items[key] = (now, run)
        else:
            self.conflicts += 1
        return conflicting

    def single_write_conflicts(self, key: tuple[str, str]) -> bool:
        last = self._tx_items.get(key)
        run = id(self.clock.current)
        hit = (
            last is not None
            and last[1] != run
            and self.clock.now - last[0] < (self.conflict_window_s)
        )
        if hit:
            self.conflicts += 1
        return hit

    def top_keys(self, n: int = 10) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = [
            {"key": key, "kind": "write", "peak_units_s": load.peak, "share": load.peak / WCU_LIMIT}
            for key, load in self.writes.items()
        ] + [
            {"key": key, "kind": "read", "peak_units_s": load.peak, "share": load.peak / RCU_LIMIT}
            for key, load in self.reads.items()
        ]
        rows.sort(key=lambda row: -float(row["share"]))
        return rows[:n]

    def throttles(self) -> int:
        return sum(load.throttled for load in (*self.writes.values(), *self.reads.values()))


def _label(index: str, value: Any) -> str:
    return f"{index}:{value.value if hasattr(value, 'value') else value}"


def _gsi_keys(table: Any, item: Any) -> dict[str, str]:
    """Index name → the GSI partition (and sort key) the item sits in."""
    found: dict[str, str] = {}
    if item is None:
        return found
    for index in table.global_indexes:
        attr = next(k["AttributeName"] for k in index.schema if k["KeyType"] == "HASH")
        value = item.attrs.get(attr)
        if value is not None:
            range_attr = [k["AttributeName"] for k in index.schema if k["KeyType"] == "RANGE"]
            sort = item.attrs.get(range_attr[0]) if range_attr else None
            found[index.name] = f"{_label(index.name, value)}|{sort.value if sort else ''}"
    return found


def _bill_write(table: Any, before: Any, after: Any) -> None:
    item = after if after is not None else before
    if item is None or _meter.actor != "control_plane":
        return
    pk = str(item.hash_key.value)
    old_size = before.size() if before is not None else 0
    new_size = after.size() if after is not None else 0
    _meter.bill_write(f"table:{pk}", max(old_size, new_size))
    _meter.note_size(pk, new_size)
    old, new = _gsi_keys(table, before), _gsi_keys(table, after)
    for index in set(old) | set(new):
        if old.get(index) == new.get(index):
            _meter.bill_write(new[index].split("|")[0], new_size)
            continue
        if index in old:
            _meter.bill_write(old[index].split("|")[0], old_size)
        if index in new:
            _meter.bill_write(new[index].split("|")[0], new_size)


def _key_of(table: Any, attrs: dict[str, Any]) -> dict[str, Any]:
    key = {table.hash_key_attr: attrs[table.hash_key_attr]}
    if table.range_key_attr:
        key[table.range_key_attr] = attrs[table.range_key_attr]
    return key


def _item_id(table: Any, key: dict[str, Any]) -> tuple[str, str]:
    pk = str(next(iter(key[table.hash_key_attr].values())))
    sk = str(next(iter(key[table.range_key_attr].values()))) if table.range_key_attr else ""
    return pk, sk


def _stored(backend: Any, table: Any, key: dict[str, Any]) -> Any:
    hash_value, range_value = backend.get_keys_value(table, key)
    return table.get_item(hash_value, range_value)


def _metered_get(original: Any) -> Any:
    def get_item(self: Any, table_name: str, keys: dict[str, Any], *a: Any, **k: Any) -> Any:
        item = original(self, table_name, keys, *a, **k)
        if _meter._in_tx:
            return item  # a transaction's condition read is in its doubled write units
        pk, _ = _item_id(self.get_table(table_name), keys)
        _meter.bill_read(f"table:{pk}", item.size() if item else 1)
        return item

    return get_item


def _metered_query(original: Any) -> Any:
    def query(self: Any, table_name: str, hash_key_dict: Any, *a: Any, **k: Any) -> Any:
        results, scanned, last = original(self, table_name, hash_key_dict, *a, **k)
        index = k.get("index_name") or (a[6] if len(a) > 6 else None)
        conditions = k.get("hash_key_conditions") or []
        if index and conditions:
            label = f"{index}:{next(iter(conditions[0][1].values()))}"
        elif hash_key_dict:
            label = f"table:{next(iter(hash_key_dict.values()))}"
        else:
            label = f"{index or 'table'}:?"
        _meter.bill_read(label, sum(item.size() for item in results) or 1)
        return results, scanned, last

    return query


def _metered_write(name: str, original: Any) -> Any:
    def write(self: Any, table_name: str, key_or_item: dict[str, Any], *a: Any, **k: Any) -> Any:
        from moto.dynamodb.exceptions import DynamodbException

        table = self.get_table(table_name)
        key = _key_of(table, key_or_item) if name == "put_item" else key_or_item
        if not _meter._in_tx and _meter.single_write_conflicts(_item_id(table, key)):
            raise DynamodbException(
                "com.amazonaws.dynamodb.v20120810#TransactionConflictException",
                "Transaction is ongoing for the item",
            )
        before = _snapshot(_stored(self, table, key))
        result = original(self, table_name, key_or_item, *a, **k)
        _bill_write(table, before, _stored(self, table, key))
        return result

    return write


def _metered_transact(original: Any) -> Any:
    from moto.dynamodb.exceptions import TransactionCanceledException

    def transact(self: Any, items: list[dict[str, Any]]) -> None:
        keys = []
        for entry in items:
            op = next(iter(entry.values()))
            table = self.get_table(op["TableName"])
            keys.append(_item_id(table, _key_of(table, op["Item"]) if "Item" in op else op["Key"]))
        conflicting = _meter.check_conflicts(keys)
        if any(conflicting):
            raise TransactionCanceledException(
                [
                    ("TransactionConflict", "Transaction is ongoing for the item", None)
                    if hit
                    else (None, None, None)
                    for hit in conflicting
                ]
            )
        _meter._in_tx = True
        try:
            original(self, items)
        finally:
            _meter._in_tx = False

    return transact


def _wrap_dynamodb(meter: Meter) -> None:
    """Bill moto's backend calls (module docstring). Once per process: the last meter
    installed is the one billed."""
    from moto.dynamodb.models import DynamoDBBackend

    global _meter
    _meter = meter
    if getattr(DynamoDBBackend, "_hotbatch_metered", False):
        return
    backend: Any = DynamoDBBackend
    backend.get_item = _metered_get(backend.get_item)
    backend.query = _metered_query(backend.query)
    for name in ("put_item", "update_item", "delete_item"):
        setattr(backend, name, _metered_write(name, getattr(backend, name)))
    backend.transact_write_items = _metered_transact(backend.transact_write_items)
    backend._hotbatch_metered = True


def _snapshot(item: Any) -> Any:
    """The item as it was (moto updates items in place)."""
    import copy

    return copy.deepcopy(item) if item is not None else None


_meter: Meter
