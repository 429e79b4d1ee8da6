"""`merge.concatenate` under moto: the merged object equals the sources' concatenation byte for
byte, whatever the mix of small and large objects, and every multipart part but the last
respects S3's 5 MB minimum (moto enforces it at completion as well; the parts are also checked
here, as they are sent)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from control_plane.clients.aws import Aws
from control_plane.scheduler import merge
from tests.support.api import BUCKET

MB = 1024 * 1024
MIN_PART = 5 * MB


@dataclass
class RecordingS3:
    """The moto S3 client, with the parts of every multipart upload and the bytes read noted."""

    s3: Any
    parts: list[int] = field(default_factory=list)  # part sizes, in part-number order
    uploaded: list[int] = field(default_factory=list)  # parts sent from memory (UploadPart)
    copied: int = 0  # bytes copied server-side (UploadPartCopy, CopyObject)
    read: int = 0  # bytes read through this client (ranged GETs)
    single_copies: int = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.s3, name)

    def upload_part(self, **kwargs: Any) -> Any:
        self._expect_part(kwargs["PartNumber"])
        self.parts.append(len(kwargs["Body"]))
        self.uploaded.append(len(kwargs["Body"]))
        return self.s3.upload_part(**kwargs)

    def upload_part_copy(self, **kwargs: Any) -> Any:
        self._expect_part(kwargs["PartNumber"])
        start, end = kwargs["CopySourceRange"].removeprefix("bytes=").split("-")
        size = int(end) - int(start) + 1
        self.parts.append(size)
        self.copied += size
        return self.s3.upload_part_copy(**kwargs)

    def get_object(self, **kwargs: Any) -> Any:
        reply = self.s3.get_object(**kwargs)
        self.read += int(reply["ContentLength"])
        return reply

    def copy_object(self, **kwargs: Any) -> Any:
        self.single_copies += 1
        head = self.s3.head_object(Bucket=kwargs["Bucket"], Key=kwargs["CopySource"]["Key"])
        self.copied += int(head["ContentLength"])
        return self.s3.copy_object(**kwargs)

    def complete_multipart_upload(self, **kwargs: Any) -> Any:
        numbers = [part["PartNumber"] for part in kwargs["MultipartUpload"]["Parts"]]
        assert numbers == list(range(1, len(self.parts) + 1))
        assert all(size >= MIN_PART for size in self.parts[:-1]), self.parts
        return self.s3.complete_multipart_upload(**kwargs)

    def _expect_part(self, number: int) -> None:
        assert number == len(self.parts) + 1


def put_sources(aws: Aws, sizes: list[int | None]) -> tuple[list[str], bytes]:
    """One object per size (None: a key that does not exist); the keys and their concatenation."""
    keys, expected = [], bytearray()
    for index, size in enumerate(sizes):
        key = f"batches/b/chunks/{index:05d}/output-1.jsonl"
        keys.append(key)
        if size is None:
            continue
        data = random.Random(index).randbytes(size)
        aws.s3.put_object(Bucket=BUCKET, Key=key, Body=data)
        expected += data
    return keys, bytes(expected)


CASES = {
    "small only": [1 * MB, 200, 2 * MB],
    "small then large": [1 * MB, 6 * MB, 2 * MB],
    "large first": [11 * MB, 1 * MB],
    "buffer past 5 MB, then large": [3 * MB, 3 * MB, 12 * MB, 4 * MB, 6 * MB],
    "top-up leaves a small tail": [4 * MB, MIN_PART + 100, 300],
    "exactly 5 MB parts": [MIN_PART, MIN_PART, MIN_PART],
    "large after large": [6 * MB, 11 * MB],
    "empty and missing among them": [0, 2 * MB, None, 7 * MB, 0, None, 1],
    "single large": [None, 0, 6 * MB],
}


@pytest.mark.parametrize("sizes", list(CASES.values()), ids=list(CASES))
def test_concatenate_writes_the_sources_byte_for_byte_in_valid_parts(
    aws: Aws, sizes: list[int | None]
) -> None:
    keys, expected = put_sources(aws, sizes)
    s3 = RecordingS3(aws.s3)
    sources = merge.sizes(s3, BUCKET, keys)
    assert [size for _, size in sources] == [size for size in sizes if size]

    assert merge.concatenate(s3, BUCKET, sources, "files/merged") == len(expected)
    merged = aws.s3.get_object(Bucket=BUCKET, Key="files/merged")["Body"].read()
    assert merged == expected
    if s3.single_copies == 0:
        assert sum(s3.parts) == len(expected)
    assert s3.copied + s3.read == len(expected)
    # Large objects are copied inside S3: of each, only a part's top-up and a tail too small
    # to stand alone go through the client, and no part held in memory passes 10 MB.
    large = [size for size in sizes if size and size >= MIN_PART]
    assert s3.copied >= sum(max(0, size - 2 * MIN_PART) for size in large)
    assert all(size < 2 * MIN_PART for size in s3.uploaded)


def test_concatenate_of_nothing_writes_nothing(aws: Aws) -> None:
    keys, _ = put_sources(aws, [0, None, 0])
    sources = merge.sizes(aws.s3, BUCKET, keys)
    assert sources == []
    assert merge.concatenate(aws.s3, BUCKET, sources, "files/merged") == 0
    listed = aws.s3.list_objects_v2(Bucket=BUCKET, Prefix="files/")
    assert listed.get("KeyCount", 0) == 0


def test_a_failed_merge_leaves_no_upload_behind(aws: Aws) -> None:
    keys, _ = put_sources(aws, [1 * MB, 6 * MB])
    sources = merge.sizes(aws.s3, BUCKET, keys)
    # The second source vanished between the listing and the copy (a lifecycle rule, say).
    aws.s3.delete_object(Bucket=BUCKET, Key=keys[1])
    with pytest.raises(aws.s3.exceptions.ClientError):
        merge.concatenate(aws.s3, BUCKET, sources, "files/merged")
    assert aws.s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
