"""The streaming split against its floor: reading the same file from S3 and `json.loads` of every
line, in the same run, at 50K / 200K / 1M requests.

S3 is moto's server in its own process, so each measured child process holds only what the split
itself holds: its peak RSS is the split's memory. On 2 cores that server also competes for the CPU
while it receives the chunk uploads (which S3 would not), so the CPU time of the measuring process
is printed beside the wall-clock ratio.

    python bench/split.py [--sizes 50000 200000 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BUCKET = "hotbatch-bench"
ENDPOINT = "/v1/chat/completions"


def client(url: str) -> Any:
    import boto3
    from botocore.config import Config

    # As the control plane's client will be: no optional payload checksums (S3 checks the
    # transfer itself over TLS; computing CRC32 of every chunk costs CPU in the Lambda).
    config = Config(request_checksum_calculation="when_required", max_pool_connections=16)
    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        config=config,
    )


def make_file(path: Path, count: int) -> None:
    with path.open("wb") as out:
        for i in range(count):
            body = {
                "model": "org/model-8b",
                "messages": [
                    {"role": "system", "content": "You evaluate candidates. Answer in JSON."},
                    {"role": "user", "content": f"Candidate {i}: {i % 17} years of Python."},
                ],
                "max_tokens": 64,
            }
            line = {"custom_id": f"req-{i:08d}", "method": "POST", "url": ENDPOINT, "body": body}
            out.write(json.dumps(line).encode() + b"\n")


def measure(mode: str, url: str, key: str, batch_id: str) -> dict[str, float]:
    """Runs in a child process: one mode, its time and its peak RSS."""
    from control_plane.split import READ_SIZE, SplitLimits, read_lines, split_s3_object

    s3 = client(url)
    before = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = before.ru_utime + before.ru_stime
    started = time.perf_counter()
    if mode == "baseline":
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"]
        for raw in read_lines(body.iter_chunks(READ_SIZE)):
            if raw.strip():
                json.loads(raw)
        chunks = 0
    else:
        limits = SplitLimits(max_requests=1_000_000)
        result = split_s3_object(
            s3, bucket=BUCKET, key=key, batch_id=batch_id, endpoint=ENDPOINT, limits=limits
        )
        assert result.ok, result.errors[:3]
        chunks = len(result.chunks)
    elapsed = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "seconds": elapsed,
        "cpu_s": usage.ru_utime + usage.ru_stime - cpu_before,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "chunks": chunks,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 200_000, 1_000_000])
    parser.add_argument("--child", nargs=4, metavar=("MODE", "URL", "KEY", "BATCH"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child)))
        return

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(url)
        s3 = client(url)
        s3.create_bucket(Bucket=BUCKET)
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}")
        for size in args.sizes:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "input.jsonl"
                make_file(path, size)
                key = f"files/input-{size}"
                s3.upload_file(str(path), BUCKET, key)
                megabytes = path.stat().st_size / 1e6
            base = _child("baseline", url, key, f"batch_{size}")
            split = _child("split", url, key, f"batch_{size}")
            print(
                f"{size:>9,} requests ({megabytes:6.1f} MB): "
                f"baseline {base['seconds']:6.2f}s / {base['peak_rss_mb']:5.0f} MB RSS; "
                f"split {split['seconds']:6.2f}s / {split['peak_rss_mb']:5.0f} MB RSS, "
                f"{int(split['chunks'])} chunks; ratio {split['seconds'] / base['seconds']:.2f}x "
                f"wall (target <= 2x), {split['cpu_s'] / base['cpu_s']:.2f}x CPU of this process"
            )
            s3.delete_object(Bucket=BUCKET, Key=key)
    finally:
        server.terminate()
        server.wait(10)


def _child(mode: str, url: str, key: str, batch_id: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", mode, url, key, batch_id],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _wait_for(url: str) -> None:
    import urllib.request

    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


if __name__ == "__main__":
    main()
