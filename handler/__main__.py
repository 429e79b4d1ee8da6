"""`python -m handler`: load the engine, then run the runpod worker loop.

Without `RUNPOD_WEBHOOK_GET_JOB` the runpod SDK runs one local job from `test_input.json` (or
`--test_input '{...}'`) and exits, which is how a worker image is smoke-tested.
"""

from __future__ import annotations

import logging

from handler import logs
from handler.main import install, serve
from handler.runtime import start_runtime
from handler.settings import WorkerSettings

log = logging.getLogger("handler.worker")


def main() -> None:
    logs.configure()
    settings = WorkerSettings()
    log.info("worker starting", extra={"settings": settings.model_dump(mode="json")})
    runtime = start_runtime(settings)
    install(runtime)
    try:
        serve(settings)
    finally:
        # The local test mode ends with sys.exit(); shut the engine down cleanly either way.
        runtime.stop()


if __name__ == "__main__":
    main()
