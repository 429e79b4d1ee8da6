"""Lambda entry point of the split function (invoked asynchronously by the API)."""

from __future__ import annotations

from typing import Any

from control_plane.aws import Aws
from control_plane.kick import lambda_kick
from control_plane.observability import configure_lambda, count, lambda_entry
from control_plane.settings import Settings
from control_plane.split.job import run_split

_aws = Aws(Settings())
_kick = lambda_kick(_aws)
configure_lambda()


@lambda_entry
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    item = run_split(_aws, str(event["batch_id"]))
    count("BatchesSplit" if item["status"] == "in_progress" else "BatchesRejected")
    count("RequestsAccepted", int(item.get("n_total", 0)))
    if item["status"] == "in_progress":
        # Kick the tick so the first chunks leave now rather than at the next scheduled tick.
        _kick(item["id"])
    return {"batch_id": item["id"], "status": item["status"]}
