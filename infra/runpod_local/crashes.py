"""Workers that crash: the restart backoff and what a worker that could not start said.

RunPod backs off a worker that keeps failing and shows it as `unhealthy` until one starts; the
pool does the same with `RestartBackoff`. A worker that exits before its first job-take never
loaded its engine: `StartFailure` keeps its exit code and the error lines of its own log, so
`hotbatch local up` can stop with the cause instead of waiting.
"""

from __future__ import annotations

import json
import re
import signal
from dataclasses import dataclass, field
from pathlib import Path

# An exception line as Python prints it (`ValueError: …`, `huggingface_hub.errors.X: …`), also
# after a prefix such as vLLM's `(EngineCore pid=1) ERROR 12-03 10:08:23 [core.py:9] `.
_EXCEPTION = re.compile(r"(?<![\w.])((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception)): \S.*$")
_MAX_LINE = 600
_TAIL = 20


@dataclass
class RestartBackoff:
    """Exponential delay before the pool starts a worker again after crashes: `base_s` after
    the first, doubling up to `max_s`; a worker that starts after the last crash resets it."""

    base_s: float = 1.0
    max_s: float = 60.0
    crashes: int = 0
    last_crash_at: float | None = None
    not_before: float = 0.0

    def crashed(self, now: float) -> float:
        """Record a crash at `now`; returns the delay before the next start."""
        self.crashes += 1
        self.last_crash_at = now
        delay = min(self.max_s, self.base_s * 2.0 ** (self.crashes - 1))
        self.not_before = now + delay
        return delay

    def started(self, ready_at: float) -> bool:
        """A worker became ready at `ready_at`; it clears the crashes that came before it.
        True when it did (there were crashes to clear)."""
        if self.last_crash_at is None or ready_at < self.last_crash_at:
            return False
        self.crashes, self.last_crash_at, self.not_before = 0, None, 0.0
        return True

    def allows_start(self, now: float) -> bool:
        return now >= self.not_before


@dataclass
class StartFailure:
    """A worker that exited before its engine loaded."""

    worker_id: str
    code: int
    log_path: Path | None = None
    lines: list[str] = field(default_factory=list)

    @property
    def cause(self) -> str:
        if self.code < 0:
            name = signal.Signals(-self.code).name
            hint = " (out of memory?)" if self.code == -signal.SIGKILL else ""
            return f"worker {self.worker_id} was killed by {name}{hint} before its engine loaded"
        return f"worker {self.worker_id} exited with code {self.code} before its engine loaded"

    def report(self) -> str:
        """The cause, the worker's own error lines, and where its whole log is."""
        parts = [self.cause + (":" if self.lines else "")]
        parts += [f"  {line}" for line in self.lines]
        if self.log_path is not None:
            parts.append(f"full log: {self.log_path}")
        return "\n".join(parts)


def read_log(path: Path, offset: int = 0) -> str:
    """A worker's log from `offset` (where this worker's run began in an appended file)."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def error_lines(log: str, limit: int = 8) -> list[str]:
    """The lines that name what went wrong: every distinct exception line (outermost last, as
    Python prints a chain) and the messages of ERROR records in the worker's JSON logs; failing
    those, the last lines of the log."""
    found: list[str] = []
    for line, error_record in _lines(log):
        match = _EXCEPTION.search(line)
        if error_record:
            found.append(line)
        elif match is not None:
            found.append(match.group(1) + line[match.end(1) :])
    distinct = list(dict.fromkeys(line[:_MAX_LINE] for line in found))
    if distinct:
        return distinct[-limit:]
    tail = [line for line in log.splitlines() if line.strip()][-_TAIL:]
    return [line[:_MAX_LINE] for line in tail]


def _lines(log: str) -> list[tuple[str, bool]]:
    """The log's lines, with JSON records opened up: an ERROR record's message (flagged True)
    and the lines of its `exception` field (a traceback inside one JSON string)."""
    lines: list[tuple[str, bool]] = []
    for line in log.splitlines():
        record = _json_record(line)
        if record is None:
            lines.append((line, False))
            continue
        if str(record.get("level")) in ("ERROR", "CRITICAL"):
            lines.append((f"{record.get('logger', 'worker')}: {record.get('message', '')}", True))
        lines += [(text, False) for text in str(record.get("exception") or "").splitlines()]
    return lines


def _json_record(line: str) -> dict[str, object] | None:
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None
