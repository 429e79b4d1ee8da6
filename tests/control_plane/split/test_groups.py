"""Prefix-grouped chunking: the group key, chunks that keep a group together, bounded buffers,
errors and line numbers as in a plain split, idempotency, and the dispatch order of groups."""

from __future__ import annotations

import collections
import json
import tracemalloc
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from control_plane.clients.aws import Aws
from control_plane.models import ChunkRef
from control_plane.split.groups import GroupPacker, PackedChunk, prefix_group
from control_plane.split.job import run_split
from control_plane.split.stream import SplitLimits, SplitResult, split_lines, split_s3_object
from control_plane.store import ChunkItem
from control_plane.store import chunks as chunk_store
from tests.control_plane.split.test_job import TENANT, admitted
from tests.support.api import stored_file
from tests.support.lines import jsonl
from tests.support.moto_state import KEEP_BOTO3_SESSION

CHAT = "/v1/chat/completions"


def system(group: int) -> str:
    return f"You are grader {group}. " + "Score the answer against the rubric. " * 20


def chat_body(group: int, i: int, model: str = "m") -> dict[str, Any]:
    messages = [
        {"role": "system", "content": system(group)},
        {"role": "user", "content": f"question {i}"},
    ]
    return {"model": model, "messages": messages}


def grouped_line(group: int, i: int, **extra: Any) -> bytes:
    request = {"custom_id": f"r{i}", "method": "POST", "url": CHAT, "body": chat_body(group, i)}
    request.update(extra)
    return json.dumps(request).encode()


def interleaved(requests: int, groups: int) -> list[bytes]:
    """Round-robin over `groups` system prompts: the worst order for a small prefix cache."""
    return [grouped_line(i % groups, i) for i in range(requests)]


def run(lines: list[bytes], **limits: Any) -> tuple[SplitResult, dict[str, bytes]]:
    written: dict[str, bytes] = {}

    def write(chunk: ChunkRef, content: bytes) -> None:
        written[chunk.key] = content

    result = split_lines(
        lines, batch_id="batch_1", endpoint=CHAT, limits=SplitLimits(**limits), write_chunk=write
    )
    return result, written


def groups_of(content: bytes) -> list[str]:
    return [prefix_group(json.loads(line)["body"]) for line in content.splitlines()]


def runs(values: list[str]) -> list[str]:
    """The values with consecutive repeats collapsed: a group that is contiguous appears once."""
    return [v for i, v in enumerate(values) if i == 0 or values[i - 1] != v]


# --- the group key ---------------------------------------------------------------------------


def test_chat_requests_group_by_the_messages_before_the_last_user_turn() -> None:
    assert prefix_group(chat_body(1, 1)) == prefix_group(chat_body(1, 2))
    assert prefix_group(chat_body(1, 1)) != prefix_group(chat_body(2, 1))
    assert prefix_group(chat_body(1, 1)) != prefix_group(chat_body(1, 1, model="other"))
    few_shot = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "example"},
        {"role": "assistant", "content": "answer"},
    ]
    a = {"model": "m", "messages": [*few_shot, {"role": "user", "content": "one"}]}
    b = {"model": "m", "messages": [*few_shot, {"role": "user", "content": "two"}]}
    no_shot = {"model": "m", "messages": [few_shot[0], {"role": "user", "content": "one"}]}
    assert prefix_group(a) == prefix_group(b) != prefix_group(no_shot)
    with_tools = {**a, "tools": [{"type": "function", "function": {"name": "f"}}]}
    assert prefix_group(with_tools) != prefix_group(a)


def test_a_lone_user_message_or_a_completion_prompt_groups_by_its_first_bytes() -> None:
    template = "Translate into French, keeping the register and the names. " * 6

    def user(text: str) -> dict[str, Any]:
        return {"model": "m", "messages": [{"role": "user", "content": text}]}

    assert prefix_group(user(template + "one")) == prefix_group(user(template + "two"))
    assert prefix_group(user("short one")) != prefix_group(user("short two"))
    prompt = {"model": "m", "prompt": template + "one"}
    assert prefix_group(prompt) == prefix_group({"model": "m", "prompt": template + "two"})
    tokens = {"model": "m", "prompt": list(range(200))}
    assert prefix_group(tokens) == prefix_group({"model": "m", "prompt": list(range(199))})


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"messages": []},
        {"messages": "not a list"},
        {"messages": [1, None, {"role": 3}]},
        {"messages": [{"role": "user", "content": {"odd": ["shape"]}}]},
        {"prompt": None},
    ],
)
def test_malformed_bodies_still_get_a_group(body: dict[str, Any]) -> None:
    group = prefix_group(body)
    assert len(group) == 12 and int(group, 16) >= 0
    assert prefix_group(json.loads(json.dumps(body))) == group


# --- chunks ----------------------------------------------------------------------------------


def test_interleaved_prompts_are_cut_into_chunks_of_one_group_each() -> None:
    lines = interleaved(400, 4)  # 100 per group
    result, written = run(lines, chunk_max_requests=50)

    assert result.ok and result.total_requests == 400 and len(result.chunks) == 8
    for chunk in result.chunks:
        content = written[chunk.key]
        assert set(groups_of(content)) == {chunk.group} and chunk.groups == 1
        first = json.loads(content.splitlines()[0])["custom_id"]
        assert lines[chunk.first_line - 1].startswith(f'{{"custom_id": "{first}"'.encode())
    assert collections.Counter(b"".join(written.values()).splitlines()) == collections.Counter(
        lines
    )


def test_a_group_keeps_its_file_order_and_leftovers_share_chunks_group_by_group() -> None:
    lines = interleaved(64 * 10, 64)  # 64 groups of 10, none fills a chunk
    result, written = run(lines, chunk_max_requests=100)

    assert [c.requests for c in result.chunks] == [100] * 6 + [40]
    split_groups = 0
    for chunk in result.chunks:
        groups = groups_of(written[chunk.key])
        assert len(runs(groups)) == len(set(groups)) == chunk.groups  # each group contiguous
        assert chunk.group == groups[0]
        split_groups += len(set(groups))
    assert split_groups <= 64 + len(result.chunks) - 1  # at most one group cut per boundary
    for group in {prefix_group(json.loads(line)["body"]) for line in lines}:
        ids = [
            json.loads(line)["custom_id"]
            for key in sorted(written)
            for line in written[key].splitlines()
            if prefix_group(json.loads(line)["body"]) == group
        ]
        assert ids == sorted(ids, key=lambda i: int(i[1:]))  # file order inside a group


def test_a_file_of_distinct_prompts_is_cut_in_file_order_as_before() -> None:
    lines = [
        json.dumps(
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": CHAT,
                "body": {"model": "m", "messages": [{"role": "user", "content": f"q{i}"}]},
            }
        ).encode()
        for i in range(25)
    ]
    grouped, written = run(lines, chunk_max_requests=10)
    plain, plain_written = run(lines, chunk_max_requests=10, group_by_prefix=False)

    expected = [(0, 10, 1), (1, 10, 11), (2, 5, 21)]
    assert [(c.index, c.requests, c.first_line) for c in grouped.chunks] == expected
    assert [(c.index, c.requests, c.first_line) for c in plain.chunks] == expected
    assert written == plain_written
    assert b"".join(written.values()) == b"\n".join(lines) + b"\n"


def test_grouping_off_cuts_interleaved_prompts_in_file_order() -> None:
    lines = interleaved(30, 3)
    result, written = run(lines, chunk_max_requests=10, group_by_prefix=False)
    assert [c.first_line for c in result.chunks] == [1, 11, 21]
    assert {c.group for c in result.chunks} == {""}
    assert b"".join(written.values()) == b"\n".join(lines) + b"\n"


def test_the_same_file_is_cut_into_the_same_chunks_every_time() -> None:
    lines = interleaved(1000, 37)
    limits = {"chunk_max_requests": 30, "group_buffer_bytes": 64 * 1024, "max_open_groups": 20}
    first, first_written = run(lines, **limits)
    second, second_written = run(lines, **limits)
    assert first == second and first_written == second_written
    assert sum(c.requests for c in first.chunks) == 1000


def test_errors_and_line_numbers_are_those_of_the_file() -> None:
    lines = interleaved(40, 4)
    lines[6] = b"{not json"
    lines[21] = grouped_line(1, 3)  # custom_id r3 again
    lines[33] = grouped_line(2, 99, url="/v1/completions")
    result, written = run(lines, chunk_max_requests=5)

    assert not result.ok and result.chunks == [] and written == {}
    assert [(e.code, e.line) for e in result.errors] == [
        ("invalid_json_line", 7),
        ("duplicate_custom_id", 22),
        ("mismatched_url", 34),
    ]
    assert "22" in result.errors[1].message and "'r3'" in result.errors[1].message


# --- bounded memory ----------------------------------------------------------------------------


def test_buffers_stay_within_their_byte_and_group_bounds() -> None:
    chunks: list[PackedChunk] = []
    packer = GroupPacker(
        max_requests=50,
        max_bytes=64 * 1024,
        buffer_bytes=200_000,
        max_groups=100,
        emit=chunks.append,
    )
    fed = 0
    for number, raw in enumerate(interleaved(20_000, 3_000), start=1):
        packer.add(prefix_group(json.loads(raw)["body"]), number, raw)
        fed += 1
        assert packer.held_bytes <= 200_000 and len(packer.open) <= 100
    packer.finish()

    assert not packer.open and packer.held_bytes == 0
    numbers = sorted(n for chunk in chunks for n in _numbers(chunk))
    assert numbers == list(range(1, fed + 1))  # every line in exactly one chunk
    assert all(len(c.lines) <= 50 for c in chunks)
    assert sum(len(c.lines) for c in chunks) / len(chunks) > 45  # packed, not one per group


def _numbers(chunk: PackedChunk) -> list[int]:
    return [int(json.loads(line)["custom_id"][1:]) + 1 for line in chunk.lines]


def test_a_split_of_many_distinct_prefixes_holds_no_more_than_its_buffer() -> None:
    def lines() -> Iterator[bytes]:  # ~14 MB of input, never held whole
        for i in range(8_000):  # long lines: fewer to trace, as many bytes
            yield grouped_line(i % 2_000, i, pad="x" * 1_200)

    sizes: list[int] = []
    tracemalloc.start()
    try:
        result = split_lines(
            lines(),
            batch_id="batch_1",
            endpoint=CHAT,
            limits=SplitLimits(
                chunk_max_requests=100,
                chunk_max_bytes=256 * 1024,
                max_requests=50_000,
                group_buffer_bytes=1024 * 1024,
                max_open_groups=1_000,
            ),
            write_chunk=lambda chunk, content: sizes.append(len(content)),
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.ok and sum(c.requests for c in result.chunks) == 8_000
    assert sum(sizes) > 13_000_000
    # The buffer (1 MiB of lines, Python's overhead on top) and the duplicate set, not the file.
    assert peak < 8 * 1024 * 1024, peak


# --- under moto: idempotent split, chunk items, dispatch order --------------------------------


@pytest.fixture()
def s3() -> Iterator[Any]:
    with mock_aws(config=KEEP_BOTO3_SESSION):
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="hotbatch-test")
        yield client


def test_a_retried_grouped_split_writes_identical_chunk_objects(s3: Any) -> None:
    lines = interleaved(700, 7)  # 100 per group: two full chunks each
    s3.put_object(Bucket="hotbatch-test", Key="files/file-1", Body=b"\n".join(lines))
    kwargs: dict[str, Any] = {
        "bucket": "hotbatch-test",
        "key": "files/file-1",
        "batch_id": "batch_9",
        "endpoint": CHAT,
        "limits": SplitLimits(chunk_max_requests=50),
    }

    def objects() -> dict[str, bytes]:
        listed = s3.list_objects_v2(Bucket="hotbatch-test", Prefix="batches/")["Contents"]
        return {
            o["Key"]: s3.get_object(Bucket="hotbatch-test", Key=o["Key"])["Body"].read()
            for o in listed
        }

    first = split_s3_object(s3, **kwargs)
    before = objects()
    second = split_s3_object(s3, **kwargs)
    assert first == second and objects() == before
    assert all(len(set(groups_of(body))) == 1 for body in before.values())


def pending_chunks(aws: Aws) -> list[ChunkItem]:
    """The tenant's pending chunks in the order its queue hands them to the dispatcher."""
    items, _ = chunk_store.pending_of(
        aws.table,
        endpoint_id=aws.settings.runpod_endpoint_id,
        priority="normal",
        tenant_id=TENANT,
        limit=100,
    )
    return items


@pytest.mark.parametrize("settings", [{"chunk_max_requests": 10}], indirect=True)
def test_chunk_items_record_their_group_and_pending_chunks_come_group_by_group(aws: Aws) -> None:
    content = b"\n".join(interleaved(60, 3)) + b"\n"  # 3 groups of 20
    batch_id = admitted(aws, stored_file(aws, content, line_count=60))

    run_split(aws, batch_id)
    items = chunk_store.list_chunks(aws.table, batch_id=batch_id)
    pending = pending_chunks(aws)

    # Numbered as they filled (A B C A B C), dispatched group by group.
    assert all(len(item["group"]) == 12 and item["groups"] == 1 for item in items)
    assert len(runs([item["group"] for item in items])) == 6
    assert [item["group_order"] for item in items] == [0, 1, 2, 0, 1, 2]
    assert [item["chunk_id"] for item in pending] == [f"0000{n}" for n in (0, 3, 1, 4, 2, 5)]
    assert len(runs([item["group"] for item in pending])) == 3


@pytest.mark.parametrize("settings", [{"chunk_max_requests": 4}], indirect=True)
def test_chunks_of_distinct_prompts_dispatch_in_number_order(aws: Aws) -> None:
    batch_id = admitted(aws, stored_file(aws, jsonl(20), line_count=20))

    run_split(aws, batch_id)
    pending = pending_chunks(aws)

    assert [item["chunk_id"] for item in pending] == [f"0000{n}" for n in range(5)]
    assert [item["group_order"] for item in pending] == list(range(5))
    assert all(item["groups"] == 4 for item in pending)


def test_responses_requests_group_by_their_instructions_and_embeddings_by_their_input() -> None:
    def responses(instructions: str, text: str) -> dict[str, Any]:
        return {"model": "tiny", "instructions": instructions, "input": text}

    assert prefix_group(responses("be brief", "a")) == prefix_group(responses("be brief", "b"))
    assert prefix_group(responses("be brief", "a")) != prefix_group(responses("be long", "a"))
    system = {"role": "system", "content": "grade the answer"}
    items = [{"model": "tiny", "input": [system, {"role": "user", "content": t}]} for t in "ab"]
    assert prefix_group(items[0]) == prefix_group(items[1])
    embed = [{"model": "tiny-embed", "input": t} for t in ("x" * 300 + "1", "x" * 300 + "2")]
    assert prefix_group(embed[0]) == prefix_group(embed[1])
    assert prefix_group(embed[0]) != prefix_group({"model": "tiny-embed", "input": "y" * 300})
