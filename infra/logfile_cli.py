"""Where `hotbatch local run` puts its log lines: one file, as JSON lines, so that the terminal
shows only the run's progress. The workers write their own files beside it (their pool's
`log_dir`); this takes every logger of the CLI's own process, the stack's included."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

# hotbatch's own loggers go to the file from INFO (one line per event that matters); the
# libraries' from WARNING, as Python's default: their INFO is a line per HTTP request (the local
# endpoint's access log, the SDK's requests), thousands per batch.
OWN_LOGGERS = ("handler", "control_plane", "infra")


def _to_terminal(handler: logging.Handler) -> bool:
    streams = {id(sys.stderr), id(sys.stdout), id(sys.__stderr__), id(sys.__stdout__)}
    return (
        isinstance(handler, logging.StreamHandler)
        and not isinstance(handler, logging.FileHandler)
        and id(handler.stream) in streams
    )


@dataclass
class LogFile:
    """Every log record of this process into `path` as JSON lines while it is entered, so the
    terminal keeps the progress: the root logger writes there, loggers that wrote to the
    terminal themselves are moved there (`claim` again once something has configured more,
    as uvicorn does when it starts), Python's warnings and the last-resort handler too.
    Everything is put back on exit, so that tests can run it in their own process."""

    path: Path
    handler: logging.Handler | None = None
    _root: tuple[list[logging.Handler], int] = field(default_factory=lambda: ([], 0))
    _last_resort: logging.Handler | None = None
    _moved: list[tuple[logging.Logger, logging.Handler]] = field(default_factory=list)
    _added: list[logging.Logger] = field(default_factory=list)
    _captured_warnings: bool = False
    _levels: dict[str, int] = field(default_factory=dict)

    def __enter__(self) -> LogFile:
        from handler.logs import JsonFormatter

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_bytes(b"")  # this run's lines only
        # Appending, not "w": logging.config.dictConfig (uvicorn's) closes every handler, and
        # a FileHandler opened with "w" would stay closed instead of reopening on the next line.
        self.handler = logging.FileHandler(self.path, mode="a", encoding="utf-8")
        self.handler.setFormatter(JsonFormatter())
        root = logging.getLogger()
        self._root = (root.handlers[:], root.level)
        root.handlers = [h for h in root.handlers if not _to_terminal(h)] + [self.handler]
        root.setLevel(logging.WARNING)
        for name in OWN_LOGGERS:
            self._levels[name] = logging.getLogger(name).level
            logging.getLogger(name).setLevel(logging.INFO)
        self._last_resort, logging.lastResort = logging.lastResort, self.handler
        # Already captured (by a caller): leave it so.
        self._captured_warnings = getattr(logging, "_warnings_showwarning", None) is None
        if self._captured_warnings:
            logging.captureWarnings(True)
        self.claim(restore=True)
        return self

    def claim(self, *, restore: bool = False) -> None:
        """Move every logger's terminal handlers to the file (`restore`: put them back on
        exit; a handler configured while entered is dropped instead, its stream may be gone)."""
        assert self.handler is not None
        for logger in list(logging.Logger.manager.loggerDict.values()):
            if not isinstance(logger, logging.Logger):
                continue
            moved = [h for h in logger.handlers if _to_terminal(h)]
            for handler in moved:
                logger.removeHandler(handler)
                if restore:
                    self._moved.append((logger, handler))
            if moved and not logger.propagate and self.handler not in logger.handlers:
                logger.addHandler(self.handler)
                self._added.append(logger)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        assert self.handler is not None
        for logger in self._added:
            logger.removeHandler(self.handler)
        for logger, handler in self._moved:
            logger.addHandler(handler)
        root = logging.getLogger()
        root.handlers, level = self._root
        root.setLevel(level)
        for name, before in self._levels.items():
            logging.getLogger(name).setLevel(before)
        logging.lastResort = self._last_resort
        if self._captured_warnings:
            logging.captureWarnings(False)
        self.handler.close()
