"""Lambda entry point of the split function (invoked asynchronously by the API)."""

from __future__ import annotations

from typing import Any

from control_plane.aws import Aws
from control_plane.settings import Settings
from control_plane.splitting import run_split

_aws = Aws(Settings())


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    item = run_split(_aws, str(event["batch_id"]))
    return {"batch_id": item["id"], "status": item["status"]}
