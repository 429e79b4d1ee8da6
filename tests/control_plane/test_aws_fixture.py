"""The `aws` fixture copies in what `create_resources` made once a session
(`tests.support.moto_state`): each test must see exactly what `create_resources` makes now,
and nothing an earlier test wrote."""

from __future__ import annotations

from typing import Any

from moto.core.models import MockAWS

from control_plane.clients.aws import Aws
from infra.aws_resources import create_resources
from tests.support.api import BUCKET, TABLE
from tests.support.moto_state import Pristine

FRESH = "hotbatch-fresh"


def described(aws: Aws, table: str, bucket: str) -> dict[str, Any]:
    """What a test can see of the table, bucket and queues, less their names and dates."""
    dynamodb, s3, sqs = aws.dynamodb, aws.s3, aws.sqs
    description = dynamodb.describe_table(TableName=table)["Table"]
    queues = {}
    for url in sqs.list_queues(QueueNamePrefix=table)["QueueUrls"]:
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        for dated in ("QueueArn", "CreatedTimestamp", "LastModifiedTimestamp"):
            attributes.pop(dated)
        queues[url.rsplit("/", 1)[1].removeprefix(table)] = attributes
    return {
        "keys": description["KeySchema"],
        "attributes": description["AttributeDefinitions"],
        "indexes": [
            {name: index[name] for name in ("IndexName", "KeySchema", "Projection")}
            for index in description["GlobalSecondaryIndexes"]
        ],
        "billing": description["BillingModeSummary"],
        "ttl": dynamodb.describe_time_to_live(TableName=table)["TimeToLiveDescription"],
        "encryption": s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"],
        "public_access": s3.get_public_access_block(Bucket=bucket)[
            "PublicAccessBlockConfiguration"
        ],
        "ownership": s3.get_bucket_ownership_controls(Bucket=bucket)["OwnershipControls"],
        "lifecycle": s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"],
        "queues": queues,
    }


def test_each_test_gets_the_resources_create_resources_makes(aws: Aws) -> None:
    copied = described(aws, TABLE, BUCKET)
    create_resources(
        dynamodb=aws.dynamodb, s3=aws.s3, sqs=aws.sqs, table_name=FRESH, bucket_name=FRESH
    )
    assert copied == described(aws, FRESH, FRESH)
    assert len(copied["indexes"]) >= 1 and copied["ttl"]["TimeToLiveStatus"] == "ENABLED"
    assert set(copied["queues"]) == {"-dispatch.fifo", "-batches.fifo"}


def test_what_a_test_wrote_is_gone_for_the_next(aws: Aws, pristine: Pristine) -> None:
    aws.dynamodb.put_item(TableName=TABLE, Item={"pk": {"S": "left"}, "sk": {"S": "over"}})
    aws.s3.put_object(Bucket=BUCKET, Key="left/over", Body=b"x")
    aws.queues.sqs.send_message(
        QueueUrl=aws.queues.dispatch_url, MessageBody="left over", MessageGroupId="g"
    )

    # What the fixture does between two tests: moto's reset, then the copy.
    MockAWS().reset()
    pristine.state.restore()

    assert aws.dynamodb.scan(TableName=TABLE)["Items"] == []
    assert aws.s3.list_objects_v2(Bucket=BUCKET).get("Contents", []) == []
    attributes = aws.sqs.get_queue_attributes(
        QueueUrl=aws.queues.dispatch_url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == "0"
