"""The single-table key design, in one place; docs/storage.md draws the whole table.

Ids sort by creation time, so gsi1 (`TENANT#{t}#FILE|BATCH` / id) lists a tenant's objects
newest first with ScanIndexForward=False; gsi2 is sparse: an item is in it only while something
has to be done with it, and every queue in it is cut so that no partition grows with the fleet,
the tenants or the batches: a batch's next look (`BATCHES#due`, by time), each tenant's pending
chunks per endpoint and priority (`PENDING#{endpoint}#{rank}#{tenant}`), the dispatched chunks
of an endpoint by when they are next checked, in `DISPATCHED_SHARDS` partitions.
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
RATE_PREFIX = "RATE#"

# gsi1: a tenant's listings.
FILE_LISTING = "FILE"
BATCH_LISTING = "BATCH"
# gsi2: the work queues.
DUE_BATCHES = "BATCHES#due"
PENDING_PREFIX = "PENDING#"
DISPATCHED_PREFIX = "DISPATCHED#"
# A chunk's result adds to one of these counter items of its batch (beside META, which keeps
# what the split and redrive set): each chunk's transaction touches one shard, so the results
# of one big batch, arriving together from many workers, rarely meet on one item (DynamoDB
# cancels transactions that overlap on an item). Readers sum them (`META` + `META#C..`).
COUNTER_PREFIX = "META#C"
COUNTER_SHARDS = 16
# The dispatched chunks of one endpoint, spread over this many gsi2 partitions (write sharding:
# each claim, progress and finish writes one of them; the sweep reads all of them).
DISPATCHED_SHARDS = 8
# gsi1: a tenant's event webhook endpoints.
WEBHOOK_ENDPOINT_LISTING = "WEBHOOK_ENDPOINT"
# gsi1: a tenant's pending uploads, by expiry (an upload leaves it when completed or cancelled).
PENDING_UPLOAD_LISTING = "UPLOAD#pending"
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


def rate_window(tenant_id: str, scope: str, start: int) -> Key:
    """A tenant's request counter for one rate-limit window of one scope (`requests`, or the
    expensive routes') starting at `start` (Unix seconds): one partition per tenant, so one
    tenant's flood never shares an item with another's."""
    return {"pk": f"{RATE_PREFIX}{tenant_id}", "sk": f"{scope.upper()}#{start:010d}"}


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


def batch_counter(batch_id: str, shard: int) -> Key:
    return {"pk": f"BATCH#{batch_id}", "sk": f"{COUNTER_PREFIX}{shard:02d}"}


def counter_shard(chunk_id: str) -> int:
    """The counter item a chunk's moves add to: consecutive chunks take consecutive shards."""
    return int(chunk_id) % COUNTER_SHARDS


def scheduler_state(endpoint_id: str) -> Key:
    """One endpoint's dispatch state (window, breaker, throughput, the fair queue's clock)."""
    return {"pk": f"SCHED#{endpoint_id}", "sk": "STATE"}


def sweep_lease() -> Key:
    return {"pk": "SWEEP", "sk": "LEASE"}


def fair_queue(endpoint_id: str) -> str:
    """The partition of an endpoint's fair queue: one entry per (priority, tenant) with pending
    chunks, sorted by priority and then by the work the tenant was served (virtual time)."""
    return f"FAIRQ#{endpoint_id}"


def fair_entry(endpoint_id: str, rank: str, vtime: int, tenant_id: str) -> Key:
    return {"pk": fair_queue(endpoint_id), "sk": f"Q#{rank}#{vtime:016d}#{tenant_id}"}


def fair_member(endpoint_id: str, rank: str, tenant_id: str) -> Key:
    """Where a (priority, tenant)'s entry stands now (its virtual time), to find it by name."""
    return {"pk": fair_queue(endpoint_id), "sk": f"M#{rank}#{tenant_id}"}


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


def pending_queue(endpoint_id: str, priority: str, tenant_id: str) -> str:
    """One tenant's pending chunks for one endpoint at one priority: the fair queue picks the
    tenant, this partition gives its next chunk."""
    return f"{PENDING_PREFIX}{endpoint_id}#{PRIORITY_RANK[priority]}#{tenant_id}"


def pending_order(batch_id: str, chunk_id: str, group_order: int) -> str:
    """The tenant's oldest batch first, then its chunks group by group: `group_order` is the
    number of the first chunk of the chunk's prefix group. RunPod cannot pin a job to a
    worker, but a worker takes its endpoint's queue in order, so dispatching one group's chunks
    back to back lets the worker that runs them reuse the group's cached prefix instead of
    evicting it for another group's (the split numbers chunks as they fill, which interleaves
    groups). Ungrouped chunks lead their own group and keep their number's order."""
    return f"{batch_id}#{group_order:05d}#{chunk_id}"


def dispatched_queue(endpoint_id: str, chunk_id: str) -> str:
    return f"{DISPATCHED_PREFIX}{endpoint_id}#{int(chunk_id) % DISPATCHED_SHARDS}"


def dispatched_queues(endpoint_id: str) -> list[str]:
    return [f"{DISPATCHED_PREFIX}{endpoint_id}#{n}" for n in range(DISPATCHED_SHARDS)]


def dispatched_order(check_at: int, batch_id: str, chunk_id: str) -> str:
    """Dispatched chunks sort by when they are next checked: the sweep reads the overdue ones
    (RunPod's webhook records a result long before)."""
    return f"{check_at:010d}#{batch_id}#{chunk_id}"


def due_order(due_at: int, batch_id: str) -> str:
    """Unfinished batches sort by when they next need a look (a stale split, the completion
    window's end, a periodic re-check): the sweep reads only the ones whose time has come."""
    return f"{due_at:010d}#{batch_id}"


def delivery_order(due_at: int, event_id: str, endpoint_id: str) -> str:
    """Deliveries sort by when they are due: the tick reads the ones whose time has come."""
    return f"{due_at:010d}#{event_id}#{endpoint_id}"


def expiry_order(expires_at: int, file_id: str) -> str:
    """Expiring files sort by expiry: the tick reads the ones whose time has come."""
    return f"{expires_at:010d}#{file_id}"


def due_before(now: int) -> str:
    """The upper bound (inclusive) of a `{time:010d}#…` range that is due at `now`."""
    return f"{now:010d}~"
