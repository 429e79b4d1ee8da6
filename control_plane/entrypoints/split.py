"""Lambda entry point of the split function (invoked asynchronously by the API)."""

from __future__ import annotations

from typing import Any

from control_plane.clients.aws import Aws
from control_plane.observability import configure_lambda, count, lambda_entry
from control_plane.settings import Settings
from control_plane.split.job import run_split

_aws = Aws(Settings())
configure_lambda()


@lambda_entry
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    item = run_split(_aws, str(event["batch_id"]))
    count("BatchesSplit" if item["status"] == "in_progress" else "BatchesRejected")
    count("RequestsAccepted", int(item.get("n_total", 0)))
    # The split told the endpoint's dispatcher (an event): the first chunks leave now.
    return {"batch_id": item["id"], "status": item["status"]}
