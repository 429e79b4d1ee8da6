"""Prefix groups: which requests share a prompt prefix, and chunk buffers that keep them together.

A worker's engine caches the KV blocks of the prompts it has just seen (vLLM's automatic prefix
caching), but only as many as its KV cache holds. A file that interleaves many long system
prompts makes every request evict the prefix the next one needs; cut into chunks in file order,
each chunk carries all of them again. The split therefore routes each request into a buffer per
prefix group and cuts chunks from those buffers, so a chunk holds few groups, each contiguous,
and a worker that runs it computes each prefix once.

Memory stays bounded without sorting the file: a group's buffer becomes a chunk of its own as
soon as it is full, and when the buffers together pass `buffer_bytes` (or `max_groups` are open)
the largest buffers are packed into one chunk and let go. A file of distinct prompts is all
one-request groups, which leave in file order: the chunks are those of a plain split. Everything
here depends only on the lines and the limits, so a retried split cuts the same chunks.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

# A completion prompt (or the only message of a chat) groups by its first bytes: requests that
# share them share at least that much cacheable prefix (256 bytes is ~64 tokens, several KV
# blocks), while a longer window would split requests that share a long template and differ
# soon after it.
HEAD_BYTES = 256
# 48 bits: a collision only puts two groups in one buffer, it never loses a request.
GROUP_DIGEST_BYTES = 6
# The group of a body whose prompt parts cannot be serialised (nested past orjson's writer).
UNGROUPED = "0" * (2 * GROUP_DIGEST_BYTES)


def prefix_group(body: dict[str, Any]) -> str:
    """A short hash of the part of the prompt that requests of one group share.

    Chat: the messages before the last user turn (system prompt, few-shot turns), with the
    model and the tools (chat templates render tools into the prompt); Responses: its
    `instructions`, else its input items as chat messages. Without such messages, and for
    completions and embeddings, the first `HEAD_BYTES` of the prompt or input. Malformed
    bodies still get a group (the worker reports their errors), so grouping never fails a line.
    """
    digest = hashlib.blake2b(digest_size=GROUP_DIGEST_BYTES)
    try:
        # A JSON array delimits itself, so the parts cannot run into each other.
        digest.update(
            orjson.dumps([body.get("model"), body.get("tools")], option=orjson.OPT_SORT_KEYS)
        )
        digest.update(_shared_part(body))
    except orjson.JSONEncodeError:
        # orjson reads 1,024 levels of nesting but writes only 254: a body nested deeper than
        # that is valid JSON all the same. It goes to a group of its own kind (the worker
        # answers or refuses it); raising here would fail the whole file's split, every time.
        return UNGROUPED
    return digest.hexdigest()


def _shared_part(body: dict[str, Any]) -> bytes:
    if "instructions" in body:
        # A Responses request's system prompt leads its prompt, whatever its input.
        return b"i" + orjson.dumps(body["instructions"])
    messages = body.get("messages")
    if not isinstance(messages, list) and isinstance(body.get("input"), list):
        messages = body["input"]  # Responses input items read as chat messages do
    if not isinstance(messages, list) or not messages:
        # A completion's prompt, an embedding's or a Responses request's text input.
        return b"h" + orjson.dumps(body.get("prompt", body.get("input")))[:HEAD_BYTES]
    turn = _last_user_turn(messages)
    if turn > 0:
        # Sorted keys: two spellings of one message render the same prompt.
        return b"m" + orjson.dumps(messages[:turn], option=orjson.OPT_SORT_KEYS)
    first = messages[0]
    content = first.get("content") if isinstance(first, dict) else first
    return b"h" + orjson.dumps(content)[:HEAD_BYTES]


def _last_user_turn(messages: list[Any]) -> int:
    """The index of the last user message (of the last message when there is none)."""
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if isinstance(message, dict) and message.get("role") == "user":
            return index
    return len(messages) - 1


@dataclass(frozen=True)
class PackedChunk:
    """The lines of one chunk, as they came, with the input line of the first and the groups
    it holds (in order, each contiguous)."""

    lines: list[bytes]
    first_line: int
    groups: list[str]


@dataclass(slots=True)
class _Buffer:
    lines: list[bytes] = field(default_factory=list)
    numbers: array[int] = field(default_factory=lambda: array("q"))
    size: int = 0

    def take(self, count: int) -> tuple[list[bytes], int, int]:
        """Remove the first `count` lines; return them, the input line of the first and their
        size."""
        first = self.numbers[0]
        if count == len(self.lines):
            lines, size = self.lines, self.size
            self.lines, self.numbers, self.size = [], array("q"), 0
            return lines, first, size
        lines = self.lines[:count]
        del self.lines[:count], self.numbers[:count]
        size = sum(len(line) + 1 for line in lines)
        self.size -= size
        return lines, first, size


class GroupPacker:
    """Routes lines into per-group buffers and hands chunks to `emit` in a fixed order."""

    def __init__(
        self,
        *,
        max_requests: int,
        max_bytes: int,
        buffer_bytes: int,
        max_groups: int,
        emit: Callable[[PackedChunk], None],
    ) -> None:
        self.max_requests, self.max_bytes = max_requests, max_bytes
        # A budget below one chunk would cut a lone group's chunks short.
        self.buffer_bytes, self.max_groups = max(buffer_bytes, max_bytes), max_groups
        self.emit = emit
        # Insertion order is age: equal-sized groups leave oldest first.
        self.open: dict[str, _Buffer] = {}
        self.held_bytes = 0

    def add(self, group: str, number: int, raw: bytes) -> None:
        size = len(raw) + 1
        buffer = self.open.get(group)
        if buffer is not None and (
            len(buffer.lines) >= self.max_requests or buffer.size + size > self.max_bytes
        ):
            del self.open[group]
            self.held_bytes -= buffer.size
            self.emit(PackedChunk(buffer.lines, buffer.numbers[0], [group]))
            buffer = None
        if buffer is None:
            buffer = self.open[group] = _Buffer()
        buffer.lines.append(raw)
        buffer.numbers.append(number)
        buffer.size += size
        self.held_bytes += size
        while self.held_bytes > self.buffer_bytes or len(self.open) > self.max_groups:
            self._pack()

    def finish(self) -> None:
        while self.open:
            self._pack()

    def _pack(self) -> None:
        """Emit one chunk from the largest groups (most requests; the oldest of equals): whole
        groups while they fit, then the head of the next one to fill it. No buffer is ever over
        a chunk (`add` cuts it first), so the largest always fits whole."""
        order = sorted(self.open, key=lambda g: -len(self.open[g].lines))
        lines: list[bytes] = []
        groups: list[str] = []
        first_line = 0
        room_requests, room_bytes = self.max_requests, self.max_bytes
        for group in order:
            buffer = self.open[group]
            count = _fitting(buffer, room_requests, room_bytes)
            if count == 0:
                break
            taken, first, size = buffer.take(count)
            first_line = first_line or first
            lines += taken
            groups.append(group)
            room_requests, room_bytes = room_requests - count, room_bytes - size
            self.held_bytes -= size
            if buffer.lines:
                break  # the chunk is full; the rest of this group stays for the next one
            del self.open[group]
        self.emit(PackedChunk(lines, first_line, groups))


def _fitting(buffer: _Buffer, room_requests: int, room_bytes: int) -> int:
    """How many of the buffer's first lines fit in the room left."""
    if len(buffer.lines) <= room_requests and buffer.size <= room_bytes:
        return len(buffer.lines)
    count, size = 0, 0
    for line in buffer.lines[:room_requests]:
        size += len(line) + 1
        if size > room_bytes:
            break
        count += 1
    return count
