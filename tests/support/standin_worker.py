"""`python -m tests.support.standin_worker`: the real runpod SDK worker loop and the real
handler around the stand-in engine (built from STANDIN_* variables, see `standin`), so the
scheduler's tests run whole chunks through worker processes in seconds."""

from __future__ import annotations

import runpod

from handler import logs
from handler.main import handler, install
from handler.runtime import start_runtime
from handler.settings import WorkerSettings
from tests.support.standin import StandinEngine, engine_factory


def main() -> None:
    logs.configure()
    runtime = start_runtime(
        WorkerSettings(), engine_factory=engine_factory(StandinEngine.from_env())
    )
    install(runtime)
    try:
        runpod.serverless.start({"handler": handler})
    finally:
        runtime.stop()


if __name__ == "__main__":
    main()
