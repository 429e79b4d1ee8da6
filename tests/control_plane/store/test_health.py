"""The health items in the store: the keep-hot ping round, written by one tick at a time."""

from __future__ import annotations

from control_plane.clients.aws import Aws
from control_plane.store import health as health_store


def test_a_tick_that_lost_the_race_for_the_round_is_told_so(aws: Aws) -> None:
    seen = health_store.load_pings(aws.table)
    mine = seen.model_copy(update={"jobs": ["a"], "sent_at": 1})
    theirs = seen.model_copy(update={"jobs": ["b"], "sent_at": 1})
    assert health_store.save_pings(aws.table, seen, theirs, now=1)
    assert not health_store.save_pings(aws.table, seen, mine, now=1)  # keep_hot cancels "a"
    assert health_store.load_pings(aws.table).jobs == ["b"]
