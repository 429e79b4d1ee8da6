"""File items under moto: a conditional put that loses carries the winner, and listings page
exactly."""

from __future__ import annotations

import pytest

from control_plane.clients.aws import Aws
from control_plane.errors import StateConflict
from control_plane.ids import new_id, now_s
from control_plane.models import FileObject
from control_plane.store import files as file_store

TENANT = "tenant-s"


def test_a_lost_conditional_put_carries_the_existing_item(aws: Aws) -> None:
    file = FileObject(
        id=new_id("file"), bytes=3, created_at=now_s(), filename="a.jsonl", purpose="batch"
    )
    file_store.put_file(aws.table, tenant_id=TENANT, file=file, line_count=1)
    with pytest.raises(StateConflict) as lost:
        file_store.put_file(aws.table, tenant_id="other", file=file, line_count=9)
    assert lost.value.item is not None
    assert (lost.value.item["tenant_id"], lost.value.item["line_count"]) == (TENANT, 1)


def test_a_listing_of_exactly_limit_items_has_no_more(aws: Aws) -> None:
    ids = []
    for second in range(3):
        file = FileObject(
            id=new_id("file", now_ms=1_700_000_000_000 + second),
            bytes=1,
            created_at=now_s(),
            filename="a.jsonl",
            purpose="batch",
        )
        file_store.put_file(aws.table, tenant_id=TENANT, file=file, line_count=1)
        ids.append(file.id)

    page = file_store.list_files(
        aws.table, tenant_id=TENANT, limit=3, after=None, newest_first=True, purpose=None
    )

    assert [f.id for f in page.data] == ids[::-1] and page.has_more is False
