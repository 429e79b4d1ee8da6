"""Create the table and bucket that `template.yaml` defines, in moto or any S3/DynamoDB endpoint.

The template is the one definition: the local stack and the tests read keys, indexes, TTL and
bucket settings from it rather than from a second hand-written copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from control_plane.clients.queues import BATCHES, DISPATCH, queue_name

TEMPLATE = Path(__file__).resolve().parent.parent / "template.yaml"


class _CfnLoader(yaml.SafeLoader):
    """Reads CloudFormation's short-form tags (`!Ref X` → `{"Ref": "X"}`, `!Sub` → `Fn::Sub`)."""


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _tag)


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    with path.open() as handle:
        loaded: dict[str, Any] = yaml.load(handle, Loader=_CfnLoader)  # a SafeLoader subclass
    return loaded


def resources_of_type(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {
        name: resource
        for name, resource in template["Resources"].items()
        if resource["Type"] == kind
    }


def _resolve(value: Any, template: dict[str, Any]) -> Any:
    """Parameter references take their default; nothing else in the data resources needs more."""
    if isinstance(value, dict) and set(value) == {"Ref"}:
        return template["Parameters"][value["Ref"]]["Default"]
    if isinstance(value, dict):
        return {key: _resolve(item, template) for key, item in value.items()}
    if isinstance(value, list):
        return [_resolve(item, template) for item in value]
    return value


def table_definition(template: dict[str, Any], table_name: str) -> dict[str, Any]:
    """`create_table` arguments for the template's one table."""
    (table,) = resources_of_type(template, "AWS::DynamoDB::Table").values()
    props = _resolve(table["Properties"], template)
    return {
        "TableName": table_name,
        "AttributeDefinitions": props["AttributeDefinitions"],
        "KeySchema": props["KeySchema"],
        "GlobalSecondaryIndexes": props.get("GlobalSecondaryIndexes", []),
        "BillingMode": props["BillingMode"],
    }


# The event queues of template.yaml and the names they take here (`control_plane.clients.queues`).
EVENT_QUEUES = {"DispatchQueue": DISPATCH, "BatchQueue": BATCHES}


def create_queues(sqs: Any, table_name: str, template: dict[str, Any]) -> dict[str, str]:
    """The event queues as the template defines them (FIFO, content-based deduplication,
    visibility timeout), named after the table; their URLs by queue."""
    urls = {}
    queues = resources_of_type(template, "AWS::SQS::Queue")
    for logical, which in EVENT_QUEUES.items():
        props = _resolve(queues[logical]["Properties"], template)
        attributes = {
            "FifoQueue": str(props.get("FifoQueue", False)).lower(),
            "ContentBasedDeduplication": str(props.get("ContentBasedDeduplication", False)).lower(),
            "VisibilityTimeout": str(props.get("VisibilityTimeout", 30)),
        }
        reply = sqs.create_queue(QueueName=queue_name(table_name, which), Attributes=attributes)
        urls[which] = reply["QueueUrl"]
    return urls


def create_resources(
    *,
    dynamodb: Any,
    s3: Any,
    table_name: str,
    bucket_name: str,
    sqs: Any = None,
    template_path: Path = TEMPLATE,
) -> None:
    """Create the table (with its TTL), the bucket (encryption, public access block,
    lifecycle) and the event queues as `template.yaml` defines them. Existing ones are left as
    they are (the queues when `sqs` is given)."""
    template = load_template(template_path)
    if sqs is not None:
        create_queues(sqs, table_name, template)
    existing = dynamodb.list_tables()["TableNames"]
    if table_name not in existing:
        dynamodb.create_table(**table_definition(template, table_name))
        dynamodb.get_waiter("table_exists").wait(TableName=table_name)
        (table,) = resources_of_type(template, "AWS::DynamoDB::Table").values()
        ttl = table["Properties"].get("TimeToLiveSpecification")
        if ttl:
            dynamodb.update_time_to_live(
                TableName=table_name,
                TimeToLiveSpecification={
                    "AttributeName": ttl["AttributeName"],
                    "Enabled": ttl["Enabled"],
                },
            )
    if bucket_name not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        (bucket,) = resources_of_type(template, "AWS::S3::Bucket").values()
        _create_bucket(s3, bucket_name, _resolve(bucket["Properties"], template))


def _create_bucket(s3: Any, name: str, props: dict[str, Any]) -> None:
    s3.create_bucket(Bucket=name)
    if "BucketEncryption" in props:
        s3.put_bucket_encryption(
            Bucket=name,
            ServerSideEncryptionConfiguration={
                "Rules": [
                    {"ApplyServerSideEncryptionByDefault": rule["ServerSideEncryptionByDefault"]}
                    for rule in props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
                ]
            },
        )
    if "PublicAccessBlockConfiguration" in props:
        s3.put_public_access_block(
            Bucket=name, PublicAccessBlockConfiguration=props["PublicAccessBlockConfiguration"]
        )
    if "OwnershipControls" in props:
        s3.put_bucket_ownership_controls(Bucket=name, OwnershipControls=props["OwnershipControls"])
    rules = props.get("LifecycleConfiguration", {}).get("Rules", [])
    if rules:
        s3.put_bucket_lifecycle_configuration(
            Bucket=name, LifecycleConfiguration={"Rules": [_lifecycle_rule(r) for r in rules]}
        )


def _lifecycle_rule(rule: dict[str, Any]) -> dict[str, Any]:
    """CloudFormation's lifecycle rule shape → the S3 API's."""
    converted: dict[str, Any] = {
        "ID": rule["Id"],
        "Status": rule["Status"],
        "Filter": {"Prefix": rule.get("Prefix", "")},
    }
    if "ExpirationInDays" in rule:
        converted["Expiration"] = {"Days": int(rule["ExpirationInDays"])}
    if "AbortIncompleteMultipartUpload" in rule:
        converted["AbortIncompleteMultipartUpload"] = rule["AbortIncompleteMultipartUpload"]
    return converted
