"""DynamoDB persistence: one table (`keys.py` draws the design), one module per item kind.

Every function takes the `Table` (an injected boto3 client and the table name) as its first
argument, so tests hand in moto and nothing reads globals.
"""

from control_plane.store.items import BatchCounters, BatchItem, ChunkFields, ChunkItem
from control_plane.store.table import Item, Table, TransactionConflict

__all__ = [
    "BatchCounters",
    "BatchItem",
    "ChunkFields",
    "ChunkItem",
    "Item",
    "Table",
    "TransactionConflict",
]
