"""The single-table key design, in one place; docs/storage.md draws the whole table.

Ids sort by creation time, so gsi1 (`TENANT#{t}#FILE|BATCH` / id) lists a tenant's objects
newest first with ScanIndexForward=False; gsi2 is sparse: an item is in it only while the tick
has something to do with it (`ACTIVE` batches, `CHUNKS#pending` and `CHUNKS#dispatched` chunks).
"""

from __future__ import annotations

Key = dict[str, str]

META = "META"
HEALTH = "HEALTH"
SAMPLE_PREFIX = "SAMPLE#"
CHUNK_PREFIX = "CHUNK#"
DEAD_PREFIX = "DEAD#"

# gsi1: a tenant's listings.
FILE_LISTING = "FILE"
BATCH_LISTING = "BATCH"
# gsi2: the tick's work queues.
ACTIVE_BATCHES = "ACTIVE"
PENDING_CHUNKS = "CHUNKS#pending"
DISPATCHED_CHUNKS = "CHUNKS#dispatched"
# Pending chunks sort by priority first: one query returns the next work in dispatch order.
PRIORITY_RANK = {"high": "0", "normal": "1", "backfill": "2"}


def api_key(digest: str) -> Key:
    return {"pk": f"APIKEY#{digest}", "sk": "APIKEY"}


def tenant(tenant_id: str) -> Key:
    return {"pk": f"TENANT#{tenant_id}", "sk": "STATS"}


def file(file_id: str) -> Key:
    return {"pk": f"FILE#{file_id}", "sk": META}


def upload(upload_id: str) -> Key:
    return {"pk": f"UPLOAD#{upload_id}", "sk": META}


def batch(batch_id: str) -> Key:
    return {"pk": f"BATCH#{batch_id}", "sk": META}


def chunk(batch_id: str, index: int) -> Key:
    return {"pk": f"BATCH#{batch_id}", "sk": f"{CHUNK_PREFIX}{index:05d}"}


def dead_letter(batch_id: str, custom_id: str) -> Key:
    return {"pk": f"BATCH#{batch_id}", "sk": f"{DEAD_PREFIX}{custom_id}"}


def scheduler_state() -> Key:
    return {"pk": "SCHED", "sk": "STATE"}


def endpoint_health() -> Key:
    return {"pk": HEALTH, "sk": "ENDPOINT"}


def keep_hot_pings() -> Key:
    return {"pk": HEALTH, "sk": "PINGS"}


def health_sample(at: int, suffix: str = "") -> Key:
    """Zero-padded seconds, so a range of `sk` is a range of time; the suffix keeps both
    samples of two ticks in one second (a kick after a split beside the scheduled tick)."""
    return {"pk": HEALTH, "sk": f"{SAMPLE_PREFIX}{at:010d}{'#' + suffix if suffix else ''}"}


def tenant_listing(tenant_id: str, kind: str) -> str:
    return f"TENANT#{tenant_id}#{kind.upper()}"


def listing_start(item_key: Key, tenant_id: str, kind: str, object_id: str) -> dict[str, str]:
    """The exclusive start key of a gsi1 page after `object_id`, built from the id alone."""
    return {**item_key, "gsi1pk": tenant_listing(tenant_id, kind), "gsi1sk": object_id}


def pending_order(priority: str, batch_id: str, chunk_id: str, group_order: int) -> str:
    """Priority, then the oldest batch, then its chunks group by group: `group_order` is the
    number of the first chunk of the chunk's prefix group. RunPod cannot pin a job to a
    worker, but a worker takes its endpoint's queue in order, so dispatching one group's chunks
    back to back lets the worker that runs them reuse the group's cached prefix instead of
    evicting it for another group's (the split numbers chunks as they fill, which interleaves
    groups). Ungrouped chunks lead their own group and keep their number's order."""
    return f"{PRIORITY_RANK[priority]}#{batch_id}#{group_order:05d}#{chunk_id}"


def priority_prefix(priority: str) -> str:
    return f"{PRIORITY_RANK[priority]}#"


def dispatched_order(lease_until: int, batch_id: str, chunk_id: str) -> str:
    """Dispatched chunks sort by lease expiry: the tick reads the ones whose lease ran out."""
    return f"{lease_until:010d}#{batch_id}#{chunk_id}"
