"""The single-table key design, in one place; docs/storage.md draws the whole table.

Ids sort by creation time, so gsi1 (`TENANT#{t}#FILE|BATCH` / id) lists a tenant's objects
newest first with ScanIndexForward=False; gsi2 is sparse: an item is in it only while the tick
has something to do with it (`ACTIVE` batches, `CHUNKS#pending` and `CHUNKS#dispatched` chunks).
"""

from __future__ import annotations

import hashlib

Key = dict[str, str]

SORT_KEY_MAX_BYTES = 1024

META = "META"
HEALTH = "HEALTH"
SAMPLE_PREFIX = "SAMPLE#"
WORK_READING_PREFIX = "WORK#"
ARRIVALS_PREFIX = "ARRIVALS#"
CHUNK_PREFIX = "CHUNK#"
DEAD_PREFIX = "DEAD#"
THROUGHPUT = "THROUGHPUT"
BUCKET_PREFIX = "BUCKET#"
WORKER_PREFIX = "WORKER#"

# gsi1: a tenant's listings.
FILE_LISTING = "FILE"
BATCH_LISTING = "BATCH"
# gsi2: the tick's work queues.
ACTIVE_BATCHES = "ACTIVE"
PENDING_CHUNKS = "CHUNKS#pending"
DISPATCHED_CHUNKS = "CHUNKS#dispatched"
# gsi1: a tenant's event webhook endpoints.
WEBHOOK_ENDPOINT_LISTING = "WEBHOOK_ENDPOINT"
# gsi2: the tick's upkeep queues (event webhooks, file checks and expiry).
NEW_EVENTS = "EVENTS#new"
DUE_DELIVERIES = "DELIVERIES#due"
UNCHECKED_FILES = "FILES#unchecked"
EXPIRING_FILES = "FILES#expiring"
DELIVERY_PREFIX = "DELIVERY#"
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


def webhook_endpoint(endpoint_id: str) -> Key:
    return {"pk": f"WHE#{endpoint_id}", "sk": META}


def event(event_id: str) -> Key:
    return {"pk": f"EVENT#{event_id}", "sk": META}


def delivery(event_id: str, endpoint_id: str) -> Key:
    """One event's delivery to one endpoint, beside the event in its partition."""
    return {"pk": f"EVENT#{event_id}", "sk": f"{DELIVERY_PREFIX}{endpoint_id}"}


def batch(batch_id: str) -> Key:
    return {"pk": f"BATCH#{batch_id}", "sk": META}


def batch_id_of(pk: str) -> str:
    """The batch id in the `pk` of a batch, chunk or dead-letter item."""
    return pk.removeprefix("BATCH#")


def chunk(batch_id: str, index: int) -> Key:
    return {"pk": f"BATCH#{batch_id}", "sk": f"{CHUNK_PREFIX}{index:05d}"}


def dead_letter(batch_id: str, custom_id: str) -> Key:
    sk = f"{DEAD_PREFIX}{custom_id}"
    if len(sk.encode("utf-8", "surrogatepass")) > SORT_KEY_MAX_BYTES:
        # A custom_id longer than a sort key may be (DynamoDB: 1024 bytes) keeps a readable
        # head and a digest of the whole, so every id still has exactly one key.
        digest = hashlib.sha256(custom_id.encode("utf-8", "surrogatepass")).hexdigest()
        sk = f"{DEAD_PREFIX}{custom_id[:200]}#{digest}"
    return {"pk": f"BATCH#{batch_id}", "sk": sk}


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


def work_reading(at: int, suffix: str = "") -> Key:
    """A worker's GPU readings over one chunk, by when the chunk was recorded (seconds)."""
    return {"pk": HEALTH, "sk": f"{WORK_READING_PREFIX}{at:010d}{'#' + suffix if suffix else ''}"}


def arrivals(day: int) -> Key:
    """The batch creation times of one UTC day (Unix seconds // 86400, zero-padded so a range
    of `sk` is a range of days)."""
    return {"pk": HEALTH, "sk": f"{ARRIVALS_PREFIX}{day:06d}"}


def throughput_bucket(start: int) -> Key:
    """The figures of every chunk recorded in the bucket starting at `start` (Unix seconds,
    zero-padded so a range of `sk` is a range of time)."""
    return {"pk": THROUGHPUT, "sk": f"{BUCKET_PREFIX}{start:010d}"}


def throughput_worker(worker: str) -> Key:
    """How many chunks one worker process has run (its first one is measured apart)."""
    return {"pk": f"{WORKER_PREFIX}{worker}", "sk": THROUGHPUT}


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


def delivery_order(due_at: int, event_id: str, endpoint_id: str) -> str:
    """Deliveries sort by when they are due: the tick reads the ones whose time has come."""
    return f"{due_at:010d}#{event_id}#{endpoint_id}"


def expiry_order(expires_at: int, file_id: str) -> str:
    """Expiring files sort by expiry: the tick reads the ones whose time has come."""
    return f"{expires_at:010d}#{file_id}"


def due_before(now: int) -> str:
    """The upper bound (inclusive) of a `{time:010d}#…` range that is due at `now`."""
    return f"{now:010d}~"
