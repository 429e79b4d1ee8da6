"""Files past their `expires_at`: the S3 object and the item go together, by the tick.

DynamoDB's TTL would only drop the item and leave the object behind for ever, so expiring
files sit in the sparse gsi2 queue `FILES#expiring`, sorted by expiry: one query per tick finds
the ones due, with no scan. The object goes first: a tick killed in between leaves the item,
and the next tick deletes the (already gone) object again and then the item. Until the tick
gets to it, an expired file already answers 404.
"""

from __future__ import annotations

import logging

from control_plane.scheduler.context import TickContext
from control_plane.store import Item
from control_plane.store import files as file_store

log = logging.getLogger("control_plane.services.files")

REMOVALS_PER_TICK = 500  # S3 deletes up to 1,000 objects per call


def run(ctx: TickContext) -> dict[str, int]:
    expired = file_store.expired_files(ctx.aws.table, now=ctx.now, limit=REMOVALS_PER_TICK)
    remove_files(ctx, expired)
    return {"removed": len(expired)} if expired else {}


def remove_files(ctx: TickContext, items: list[Item]) -> None:
    if not items:
        return
    reply = ctx.aws.s3.delete_objects(
        Bucket=ctx.settings.bucket_name,
        Delete={"Objects": [{"Key": item["s3_key"]} for item in items], "Quiet": True},
    )
    failed = {error["Key"] for error in reply.get("Errors", [])}
    for item in items:
        if item["s3_key"] in failed:
            log.warning("expired file's object not deleted", extra={"file_id": item["id"]})
            continue  # the item stays queued: the next tick tries again
        file_store.delete_file(ctx.aws.table, file_id=item["id"])
        log.info("expired file removed", extra={"file_id": item["id"]})
