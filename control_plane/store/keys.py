"""The single-table key design; docs/storage.md draws the whole table with its indexes.

Ids sort by creation time, so gsi1 (`TENANT#{t}#FILE|BATCH` / id) lists a tenant's objects
newest first with ScanIndexForward=False; gsi2 is sparse: an item is in it only while it waits
for the tick (`ACTIVE` batches, `CHUNKS#pending` chunks).
"""

from __future__ import annotations

META = "META"


def api_key(digest: str) -> dict[str, str]:
    return {"pk": f"APIKEY#{digest}", "sk": "APIKEY"}


def tenant(tenant_id: str) -> dict[str, str]:
    return {"pk": f"TENANT#{tenant_id}", "sk": "STATS"}


def file(file_id: str) -> dict[str, str]:
    return {"pk": f"FILE#{file_id}", "sk": META}


def upload(upload_id: str) -> dict[str, str]:
    return {"pk": f"UPLOAD#{upload_id}", "sk": META}


def batch(batch_id: str) -> dict[str, str]:
    return {"pk": f"BATCH#{batch_id}", "sk": META}


def chunk(batch_id: str, index: int) -> dict[str, str]:
    return {"pk": f"BATCH#{batch_id}", "sk": f"CHUNK#{index:05d}"}


def dead_letter(batch_id: str, custom_id: str) -> dict[str, str]:
    return {"pk": f"BATCH#{batch_id}", "sk": f"DEAD#{custom_id}"}


HEALTH = "HEALTH"
SAMPLE_PREFIX = "SAMPLE#"


def endpoint_health() -> dict[str, str]:
    return {"pk": HEALTH, "sk": "ENDPOINT"}


def keep_hot_pings() -> dict[str, str]:
    return {"pk": HEALTH, "sk": "PINGS"}


def health_sample(at: int, suffix: str = "") -> dict[str, str]:
    """Zero-padded seconds, so a range of `sk` is a range of time; the suffix keeps both
    samples of two ticks in one second (a kick after a split beside the scheduled tick)."""
    return {"pk": HEALTH, "sk": f"{SAMPLE_PREFIX}{at:010d}{'#' + suffix if suffix else ''}"}


def tenant_listing(tenant_id: str, kind: str) -> str:
    return f"TENANT#{tenant_id}#{kind.upper()}"
