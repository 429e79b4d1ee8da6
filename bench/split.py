"""The split job against its floor: reading the same file from S3 and `json.loads` of every line,
in the same run, at 50K / 200K / 1M requests.

The split is the whole job as the split function runs it (`control_plane.split.job.run_split`):
admission of the batch, validation, chunk objects, chunk items and the batch's move to
`in_progress`, against moto's S3 and DynamoDB. Every DynamoDB write is counted (items written;
a transaction's items count twice, as AWS bills them) and printed per 100 requests.

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

from infra.wait import wait_for

BUCKET = "hotbatch-bench"
TABLE = "hotbatch-bench"
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
    from control_plane.split.stream import READ_SIZE, read_lines

    s3 = client(url)
    if mode == "split":
        aws, batch_id, writes = _admit(url, key)
    before = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = before.ru_utime + before.ru_stime
    started = time.perf_counter()
    chunks = 0
    if mode == "baseline":
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"]
        for raw in read_lines(body.iter_chunks(READ_SIZE)):
            if raw.strip():
                json.loads(raw)
    elif mode == "copy":
        chunks = _copy_in_chunks(s3, key, batch_id)
    else:
        from control_plane.split.job import run_split

        item = run_split(aws, batch_id)
        assert item["status"] == "in_progress", item.get("errors")
        chunks = int(item["chunk_count"])
    elapsed = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "seconds": elapsed,
        "cpu_s": usage.ru_utime + usage.ru_stime - cpu_before,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "chunks": chunks,
        "dynamodb_writes": sum(writes) if mode == "split" else 0,
    }


def _copy_in_chunks(s3: Any, key: str, batch_id: str) -> int:
    """The I/O floor of the split: the same chunk objects PUT with the same concurrency,
    without parsing or validating anything."""
    from concurrent.futures import ThreadPoolExecutor

    from control_plane.layout import chunk_input_key as chunk_key
    from control_plane.split.stream import READ_SIZE, UPLOAD_THREADS, read_lines

    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"]
    lines: list[bytes] = []
    index = 0
    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        for raw in read_lines(body.iter_chunks(READ_SIZE)):
            lines.append(raw)
            if len(lines) == 1000:
                content = b"\n".join(lines) + b"\n"
                pool.submit(
                    s3.put_object, Bucket=BUCKET, Key=chunk_key(batch_id, index), Body=content
                )
                index, lines = index + 1, []
        if lines:
            content = b"\n".join(lines) + b"\n"
            pool.submit(s3.put_object, Bucket=BUCKET, Key=chunk_key(batch_id, index), Body=content)
            index += 1
    return index


def _admit(url: str, key: str) -> tuple[Any, str, list[int]]:
    """A file item for the uploaded object and a batch admitted on it, as the API leaves them;
    every DynamoDB write from here on is counted."""
    from control_plane.clients.aws import Aws
    from control_plane.models import CreateBatchBody, FileObject
    from control_plane.services.batches import create_batch
    from control_plane.settings import Settings
    from control_plane.store import files as file_store

    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
    os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
    aws = Aws(
        Settings(
            table_name=TABLE,
            bucket_name=BUCKET,
            aws_endpoint_url=url,
            max_requests_per_batch=1_000_000,
            max_queued_requests=100_000_000,
        )
    )
    file_id = key.removeprefix("files/")
    size = aws.s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"]
    file = FileObject(id=file_id, bytes=size, created_at=0, filename="in.jsonl", purpose="batch")
    file_store.put_file(aws.table, tenant_id="bench", file=file, line_count=None)
    writes: list[int] = []

    def count(model: Any, params: dict[str, Any], **_: Any) -> None:
        name = model.name
        if name == "BatchWriteItem":
            writes.extend(len(requests) for requests in params["RequestItems"].values())
        elif name == "TransactWriteItems":
            writes.append(2 * len(params["TransactItems"]))
        elif name in ("PutItem", "UpdateItem", "DeleteItem"):
            writes.append(1)

    aws.dynamodb.meta.events.register("before-parameter-build.dynamodb", count)
    body = CreateBatchBody(input_file_id=file_id, endpoint=ENDPOINT, completion_window="24h")
    batch = create_batch(aws, tenant_id="bench", body=body)
    return aws, batch.id, writes


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
        wait_for(lambda: _answers(url), f"moto's server at {url}", every=0.2)
        s3 = client(url)
        _create_resources(url)
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}")
        for size in args.sizes:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "input.jsonl"
                make_file(path, size)
                key = f"files/file-{size:024x}"
                s3.upload_file(str(path), BUCKET, key)
                megabytes = path.stat().st_size / 1e6
            base = _child("baseline", url, key, f"batch_{size}")
            copy = _child("copy", url, key, f"copy_{size}")
            split = _child("split", url, key, f"batch_{size}")
            print(
                f"{size:>9,} requests ({megabytes:6.1f} MB): "
                f"baseline {base['seconds']:6.2f}s / {base['peak_rss_mb']:5.0f} MB RSS; "
                f"split {split['seconds']:6.2f}s / {split['peak_rss_mb']:5.0f} MB RSS, "
                f"{int(split['chunks'])} chunks; I/O floor (read + PUT the chunks, no parsing) "
                f"{copy['seconds']:6.2f}s; ratio {split['seconds'] / base['seconds']:.2f}x "
                f"wall (target <= 2x), {split['cpu_s'] / base['cpu_s']:.2f}x CPU of this process; "
                f"DynamoDB {split['dynamodb_writes'] * 100 / size:.3f} writes per 100 requests "
                "(target <= 1)"
            )
            s3.delete_object(Bucket=BUCKET, Key=key)
    finally:
        server.terminate()
        server.wait(10)


def _create_resources(url: str) -> None:
    import boto3

    from infra.aws_resources import create_resources

    credentials = {
        "region_name": "us-east-1",
        "aws_access_key_id": "bench",
        "aws_secret_access_key": "bench",
    }
    create_resources(
        dynamodb=boto3.client("dynamodb", endpoint_url=url, **credentials),
        s3=client(url),
        table_name=TABLE,
        bucket_name=BUCKET,
    )


def _child(mode: str, url: str, key: str, batch_id: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", mode, url, key, batch_id],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _answers(url: str) -> bool:
    import urllib.request

    try:
        urllib.request.urlopen(url, timeout=1)
    except OSError:
        return False
    return True


if __name__ == "__main__":
    main()
