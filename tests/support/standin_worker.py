"""`python -m tests.support.standin_worker`: the real runpod SDK worker loop and the real
handler around the stand-in engine (built from STANDIN_* variables, see `standin`), so the
scheduler's tests run whole chunks through worker processes in seconds."""

from __future__ import annotations

from handler import logs
from handler.main import install, serve
from handler.runtime import start_runtime
from handler.settings import WorkerSettings
from tests.support.standin import StandinEngine, engine_factory


def main() -> None:
    logs.configure()
    settings = WorkerSettings()
    runtime = start_runtime(settings, engine_factory=engine_factory(StandinEngine.from_env()))
    install(runtime)
    try:
        serve(settings)
    finally:
        runtime.stop()


if __name__ == "__main__":
    main()
