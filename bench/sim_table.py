"""The sweep table of `bench/sim_scale.py` cells, as bench/RESULTS.md shows it: one markdown row
per cell from the JSON object each run printed last.

    python bench/sim_table.py before=/tmp/baseline/*.json after=/tmp/new/*.json

Each argument is `label=path` or a bare path, labelled by the last label given; a path may be
a glob (quoted or not: one after `label=` is left to this script), its files in name order.
"""

from __future__ import annotations

import glob
import json
import re
import sys
from pathlib import Path
from typing import Any

COLUMNS = (
    "code",
    "cell",
    "busy",
    "req/s",
    "Jain",
    "p95 first chunk (s)",
    "429s",
    "/status peak",
    "hottest key",
    "conflicts",
    "surfaced",
    "p95 handler (s)",
    "DDB calls / 1k req",
    "S3 calls / 1k req",
    "CP : GPU",
    "lost / dup",
    "batches done",
)


def cell_name(cell: dict[str, Any]) -> str:
    if cell.get("scenario") == "fairness":
        return f"fairness W={cell['workers']} T={cell['tenants']}"
    return f"W={cell['workers']} A={cell['batches']} T={cell['tenants']}"


def row(label: str, cell: dict[str, Any]) -> str:
    top = (cell.get("top_keys") or [{}])[0]
    key = re.sub(r"(batch|file)_[0-9a-f]+", r"{\1}", str(top.get("key", "-")))
    hottest = f"{cell.get('hottest_key_share', 0):.1%} `{key}`"
    values = (
        label,
        cell_name(cell),
        f"{cell['busy_share']:.3f}",
        f"{cell.get('requests_per_s', 0):.1f}",
        f"{cell['jain_fairness']:.3f}" if cell.get("jain_fairness") is not None else "-",
        f"{cell.get('p95_first_chunk_wait_s', 0):.0f}",
        str(cell["runpod_429"]),
        f"{cell['status_peak_share']:.1%}",
        hottest,
        str(cell.get("conflicts", 0)),
        str(cell["surfaced_failures"]),
        f"{cell['p95_handler_s']:.2f}",
        f"{cell.get('dynamodb_calls_per_1k_requests', 0):.0f}",
        f"{cell.get('s3_calls_per_1k_requests', 0):.0f}",
        f"{cell['control_plane_cost_share']:.3%}",
        f"{cell['lost']} / {cell['duplicated']}",
        f"{cell.get('completed_batches', '-')}/{cell.get('total_batches', '-')}",
    )
    return "| " + " | ".join(values) + " |"


def main(arguments: list[str]) -> None:
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + " --- |" * len(COLUMNS))
    label = ""
    for argument in arguments:
        if "=" in argument:
            label, argument = argument.split("=", 1)
        for path in sorted(glob.glob(argument)) or [argument]:
            text = Path(path).read_text().strip()
            if text:
                print(row(label, json.loads(text.splitlines()[-1])))


if __name__ == "__main__":
    main(sys.argv[1:])
