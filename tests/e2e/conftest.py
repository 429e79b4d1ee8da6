"""The one `hotbatch local up` that the e2e tests which need nothing but its default flags share
(the tiny chat model and `tiny-embed`, one real worker each): started by the first test that
asks for it, stopped after the last. Starting one costs about two minutes of engine loading on
2 cores, which each of those test modules paid for again.

Each module acts as a tenant of its own (`local_up_tenant`: a key made with `hotbatch keys
create`), so files, batches, webhooks and the rate limit of one are never another's, and no
test depends on which ran before it. What stays shared is what a deployment shares between
tenants: the workers, the models and the throughput measured on them. A test whose assertions
rest on that (the CLI's estimate compares against the throughput its own warm-up measured)
starts a stack of its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from tests.support.stack import local_up, tenant_exports

SHARED = "shared_local_up"


class _Shared:
    """The shared stack's stop, and the last test that uses it (once collected)."""

    def __init__(self) -> None:
        self.stop = contextlib.ExitStack()
        self.last_user: str | None = None


_shared = _Shared()


@pytest.fixture(scope="session")
def shared_local_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The exports of the shared `local up` (its own key: tenant `local`)."""
    with _shared.stop:
        yield _shared.stop.enter_context(local_up(tmp_path_factory.mktemp("shared-local-up")))


@pytest.fixture(scope="module")
def local_up_tenant(
    shared_local_up: dict[str, str], request: pytest.FixtureRequest
) -> dict[str, str]:
    """The shared stack's exports with the key of a tenant of this module's own."""
    return tenant_exports(shared_local_up, "e2e-" + request.module.__name__.rsplit(".", 1)[-1])


def _uses_shared(item: pytest.Item) -> bool:
    return SHARED in getattr(item, "fixturenames", ())


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests of the shared stack one after another, where the first of them was (each
    module's in its own order): no other test runs beside the stack while it idles, which
    takes about a third of a core."""
    users = [item for item in items if _uses_shared(item)]
    if not users:
        return
    first = items.index(users[0])
    others = [item for item in items if not _uses_shared(item)]
    items[:] = [*others[:first], *users, *others[first:]]


def pytest_collection_finish(session: pytest.Session) -> None:
    users = [item.nodeid for item in session.items if _uses_shared(item)]
    _shared.last_user = users[-1] if users else None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Stop the shared stack once its last test is torn down, not at the end of the session."""
    try:
        return (yield)
    finally:
        if item.nodeid == _shared.last_user:
            _shared.stop.close()
