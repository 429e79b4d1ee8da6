"""Checking that a file is non-empty UTF-8 text and counting its request lines, piece by piece.

Resumable: the whole state is a few numbers and the decoder's unfinished character (at most
three bytes), so the tick can check a large uploaded file a slice per tick (`state()` saved in
the file's item, `from_state()` on the next tick) with a ranged GET from `size` on.
"""

from __future__ import annotations

import codecs
from dataclasses import asdict, dataclass
from typing import Any


class TextError(Exception):
    """The file is not usable as text: `message` says where and why, `code` names it."""

    def __init__(self, message: str, *, code: str):
        super().__init__(message)
        self.message, self.code = message, code


@dataclass
class TextScan:
    size: int = 0
    lines: int = 0  # lines with something other than whitespace: the requests
    newlines: int = 0
    line_has_text: bool = False
    pending: bytes = b""  # the start of a multi-byte character cut by the piece's end

    def feed(self, piece: bytes) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")("strict")
        decoder.setstate((self.pending, 0))
        try:
            decoder.decode(piece)
        except UnicodeDecodeError as exc:
            # The offset counts from this piece's start, after what the decoder still held.
            at = max(exc.start - len(self.pending), 0)
            line = self.newlines + piece[:at].count(b"\n") + 1
            raise TextError(
                f"The file is not UTF-8 text: invalid byte at offset {self.size + at} "
                f"(line {line}).",
                code="invalid_file_encoding",
            ) from exc
        self.pending = decoder.getstate()[0]
        self.size += len(piece)
        self.newlines += piece.count(b"\n")
        *complete, tail = piece.split(b"\n")
        for part in complete:
            self.lines += self.line_has_text or bool(part.strip())
            self.line_has_text = False
        self.line_has_text = self.line_has_text or bool(tail.strip())

    def finish(self) -> int:
        """The request-line count of the whole file; `TextError` if it is empty or ends
        inside a character."""
        if self.pending:
            raise TextError(
                "The file is not UTF-8 text: it ends inside a multi-byte character.",
                code="invalid_file_encoding",
            )
        lines = self.lines + self.line_has_text
        if self.size == 0 or lines == 0:
            raise TextError("The file is empty.", code="empty_file")
        return lines

    def state(self) -> dict[str, Any]:
        saved = asdict(self)
        saved["pending"] = self.pending.hex()
        return saved

    @classmethod
    def from_state(cls, saved: dict[str, Any] | None) -> TextScan:
        if not saved:
            return cls()
        return cls(
            size=int(saved["size"]),
            lines=int(saved["lines"]),
            newlines=int(saved["newlines"]),
            line_has_text=bool(saved["line_has_text"]),
            pending=bytes.fromhex(str(saved["pending"])),
        )
