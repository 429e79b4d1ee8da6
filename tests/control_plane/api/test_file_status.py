"""Files: a true `status` (OpenAI's `uploaded → processed | error` with `status_details`) and
expiry that removes the S3 object with the item, both the tick's work."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from control_plane.clients.aws import Aws
from control_plane.clients.runpod import RunPodClient
from control_plane.ids import new_id, now_s
from control_plane.models import FileObject
from control_plane.scheduler import file_check, file_expiry
from control_plane.scheduler.context import TickContext
from control_plane.services.textscan import TextError, TextScan
from control_plane.store import files as file_store
from control_plane.store import keys
from tests.support.api import BUCKET, auth, create_batch, upload, upload_id
from tests.support.lines import jsonl

MiB = 1024 * 1024


def at(aws: Aws, now: int) -> TickContext:
    unreachable = RunPodClient(base_url="http://127.0.0.1:9/v2", endpoint_id="none", api_key="x")
    return TickContext(aws=aws, runpod=unreachable, now=now)


def uploaded_file(aws: Aws, content: bytes, *, expires_at: int | None = None) -> str:
    """A file as `complete` leaves it: in S3, status `uploaded`, nothing read yet."""
    file = FileObject(
        id=new_id("file"),
        bytes=len(content),
        created_at=now_s(),
        expires_at=expires_at,
        filename="in.jsonl",
        purpose="batch",
        status="uploaded",
    )
    aws.s3.put_object(Bucket=BUCKET, Key=f"files/{file.id}", Body=content)
    file_store.put_file(aws.table, tenant_id="tenant-a", file=file, line_count=None)
    return file.id


def item(aws: Aws, file_id: str) -> dict[str, object]:
    found = file_store.get_file(aws.table, file_id)
    assert found is not None
    return found


def object_exists(aws: Aws, file_id: str) -> bool:
    listed = aws.s3.list_objects_v2(Bucket=BUCKET, Prefix=f"files/{file_id}")
    return bool(listed.get("Contents"))


@pytest.mark.parametrize("cut", range(0, 12))
def test_text_scan_in_pieces_matches_the_whole(cut: int) -> None:
    content = "ab\n  \nça 漢字\n€\n".encode()
    whole = TextScan()
    whole.feed(content)
    pieces = TextScan()
    pieces.feed(content[:cut])
    pieces = TextScan.from_state(pieces.state())  # as a tick saves and the next one resumes
    pieces.feed(content[cut:])
    assert pieces.finish() == whole.finish() == 3
    assert pieces.size == len(content)


def test_a_posted_file_is_processed_at_once(client: TestClient, key_a: str) -> None:
    reply = upload(client, key_a, jsonl(3))
    assert reply.json()["status"] == "processed" and reply.json()["status_details"] is None


def test_the_tick_checks_an_uploaded_file_a_slice_at_a_time(aws: Aws) -> None:
    # The é at the first slice's end is cut between its two bytes.
    first = b'{"custom_id": "x"}\n' * 60_000
    content = first[: MiB - 1] + "é".encode() + b"\n" + jsonl(5)
    assert content[MiB - 1 : MiB + 1] == "é".encode()
    file_id = uploaded_file(aws, content)
    outcomes = [file_check.run(at(aws, now_s()), budget=MiB) for _ in range(3)]
    assert outcomes == [{"partial": 1}, {"processed": 1}, {}]
    done = item(aws, file_id)
    assert done["status"] == "processed" and done["line_count"] == content.count(b"\n")
    assert "gsi2pk" not in done and "check_state" not in done


def test_a_file_that_is_not_text_becomes_error_with_its_reason(
    client: TestClient, key_a: str, aws: Aws
) -> None:
    content = jsonl(2) + b'{"bad": "\xff"}\n'
    file_id = uploaded_file(aws, content)
    assert file_check.run(at(aws, now_s())) == {"error": 1}
    reply = client.get(f"/v1/files/{file_id}", headers=auth(key_a)).json()
    assert reply["status"] == "error"
    assert reply["status_details"] == (
        f"The file is not UTF-8 text: invalid byte at offset {len(jsonl(2)) + 9} (line 3)."
    )
    refused = create_batch(client, key_a, file_id)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_input_file"
    assert "failed processing: The file is not UTF-8 text" in refused.json()["error"]["message"]


def test_a_blank_uploaded_file_is_an_error(aws: Aws) -> None:
    file_id = uploaded_file(aws, b"  \n\n")
    file_check.run(at(aws, now_s()))
    assert item(aws, file_id)["status_details"] == "The file is empty."
    with pytest.raises(TextError):
        TextScan().finish()


def test_expiry_removes_the_object_and_the_item(client: TestClient, key_a: str, aws: Aws) -> None:
    expiring = upload(
        client,
        key_a,
        jsonl(1),
        **{"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"},
    ).json()
    kept = upload_id(client, key_a, jsonl(1))
    stored = item(aws, expiring["id"])
    assert stored["gsi2pk"] == keys.EXPIRING_FILES and "expires_at" not in stored  # no TTL
    assert stored["file_expires_at"] == expiring["expires_at"]

    assert file_expiry.run(at(aws, expiring["expires_at"] - 1)) == {}
    assert object_exists(aws, expiring["id"])
    assert file_expiry.run(at(aws, expiring["expires_at"])) == {"removed": 1}
    assert not object_exists(aws, expiring["id"])
    assert file_store.get_file(aws.table, expiring["id"]) is None
    assert object_exists(aws, kept) and file_store.get_file(aws.table, kept) is not None


def test_an_expired_file_is_gone_from_the_api_before_the_tick_removes_it(
    client: TestClient, key_a: str, aws: Aws
) -> None:
    file = FileObject(
        id=new_id("file"),
        bytes=3,
        created_at=now_s() - 7200,
        expires_at=now_s() - 1,
        filename="old.jsonl",
        purpose="batch",
    )
    aws.s3.put_object(Bucket=BUCKET, Key=f"files/{file.id}", Body=b"{}\n")
    file_store.put_file(aws.table, tenant_id="tenant-a", file=file, line_count=1)
    assert client.get(f"/v1/files/{file.id}", headers=auth(key_a)).status_code == 404
    assert client.get(f"/v1/files/{file.id}/content", headers=auth(key_a)).status_code == 404
    listed = client.get("/v1/files", headers=auth(key_a)).json()["data"]
    assert file.id not in [f["id"] for f in listed]
    assert create_batch(client, key_a, file.id).status_code == 404


def test_an_uploaded_file_moves_to_the_expiry_queue_once_checked(aws: Aws) -> None:
    soon = now_s() + 3600
    checked = uploaded_file(aws, jsonl(2), expires_at=soon)
    expired = uploaded_file(aws, jsonl(2), expires_at=now_s() - 1)
    assert item(aws, checked)["gsi2pk"] == keys.UNCHECKED_FILES
    assert file_check.run(at(aws, now_s())) == {"processed": 1, "removed": 1}
    assert item(aws, checked)["gsi2sk"] == keys.expiry_order(soon, checked)
    assert file_store.get_file(aws.table, expired) is None and not object_exists(aws, expired)
