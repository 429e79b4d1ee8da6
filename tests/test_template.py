"""template.yaml: lint-clean, transforms offline into the expected resources and permissions,
sets every setting the code reads, and is what the local stack builds from.

Nothing here reaches AWS: cfn-lint and aws-sam-translator run in process, and the local stack is
moto. What only a real deployment can check is listed in docs/deploy.md.
"""

from __future__ import annotations

import ast
import copy
import importlib
import importlib.util
import os
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

from control_plane import observability
from control_plane.settings import LOCAL_ONLY, Settings
from infra.aws_resources import TEMPLATE, create_resources, load_template, resources_of_type
from tests.support.moto_state import KEEP_BOTO3_SESSION, read_template_once

REPO = Path(__file__).resolve().parent.parent
REGION = "us-east-1"
FUNCTIONS = ("ApiFunction", "SplitFunction", "TickFunction", "DispatchFunction", "BatchFunction")
SECRET_PARAMETERS = ("RunPodApiKeySecretArn", "WebhookSecretArn")

# Settings a function cannot or need not carry, and why. Every other setting must reach every
# function, so a new one cannot be forgotten on one of them.
NOT_SET_ON: dict[str, dict[str, str]] = {
    "split_mode": {"SplitFunction": "it is the split", "DispatchFunction": "it starts none"},
    "split_function_name": {
        "SplitFunction": "it would reference itself",
        "DispatchFunction": "it starts no split",
    },
    "public_url": {
        "ApiFunction": "HttpApi depends on ApiFunction: referencing it is a cycle",
        "SplitFunction": "ApiFunction depends on SplitFunction: referencing HttpApi is a cycle",
    },
}

# Values for the parameters without a default, as `sam deploy --guided` would get them.
EXAMPLE_PARAMETERS = {
    "RunPodEndpointId": "abc123xyz",
    "RunPodApiKeySecretArn": (
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:hotbatch/runpod-api-key-AbCdEf"
    ),
    "WebhookSecretArn": (
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:hotbatch/webhook-secret-GhIjKl"
    ),
}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


# --- 1. cfn-lint ---------------------------------------------------------------------------


# cfn-lint is imported by the two tests that run it: it takes half a second, which every
# collecting process (each xdist worker) would pay otherwise.


def _lint_problems(matches: list[Any]) -> list[str]:
    """Errors and warnings; informational matches (I…) are advice, not problems."""
    return [
        f"{m.rule.id} line {m.linenumber}: {m.message}" for m in matches if m.rule.id[0] in "EW"
    ]


def test_template_is_cfn_lint_clean(monkeypatch: pytest.MonkeyPatch) -> None:
    from cfnlint.api import lint_file

    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    assert _lint_problems(lint_file(TEMPLATE)) == []


def test_cfn_lint_reports_a_broken_copy_of_the_template(monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards the test above against a linter that silently checks nothing. cfn-lint 1.x checks
    SAM templates against SAM's schema without translating them, so it misses references inside
    environment variables and policy templates, and cycles: the transform tests below cover
    those."""
    from cfnlint.api import lint

    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    broken = TEMPLATE.read_text().replace("LogGroup: !Ref ApiLogGroup", "LogGroup: !Ref Nope", 1)
    assert any("'Nope'" in problem for problem in _lint_problems(lint(broken)))


# --- 2. the SAM transform, offline ---------------------------------------------------------


class _NoManagedPolicies:
    """The translator asks IAM for managed policy ARNs only when a template names one."""

    def load(self) -> dict[str, str]:
        return {}


def _transform(text: str) -> dict[str, Any]:
    sam = yaml_parse(text)
    for resource in sam["Resources"].values():
        properties = resource.get("Properties", {})
        for key in ("CodeUri", "ContentUri"):
            if key in properties:  # what `sam package` does after uploading the code
                properties[key] = "s3://hotbatch-artifacts/code.zip"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_DEFAULT_REGION", REGION)
        output: dict[str, Any] = transform(sam, {"AWS::Region": REGION}, _NoManagedPolicies())
    return output


@pytest.fixture(scope="module")
def transformed() -> dict[str, Any]:
    return _transform(TEMPLATE.read_text())


def _of_type(output: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: res for name, res in output["Resources"].items() if res["Type"] == kind}


def _statements(output: dict[str, Any], function: str) -> list[dict[str, Any]]:
    role = output["Resources"][f"{function}Role"]["Properties"]
    return [
        statement
        for policy in role.get("Policies", [])
        for statement in policy["PolicyDocument"]["Statement"]
    ]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _resources_for(output: dict[str, Any], function: str, action: str) -> list[Any]:
    return [
        resource
        for statement in _statements(output, function)
        if action in _as_list(statement["Action"])
        for resource in _as_list(statement["Resource"])
    ]


def _references(value: Any) -> set[str]:
    """Every logical id, parameter or pseudo parameter a value points at (Ref, Fn::GetAtt and
    Fn::Sub, whose list form binds its own local names)."""
    if isinstance(value, list):
        return set().union(*(_references(item) for item in value)) if value else set()
    if not isinstance(value, dict):
        return set()
    found: set[str] = set()
    for key, item in value.items():
        if key == "Ref":
            found.add(item)
        elif key == "Fn::GetAtt":
            found.add(item[0] if isinstance(item, list) else item.split(".", 1)[0])
        elif key == "Fn::Sub":
            text, local = (item, {}) if isinstance(item, str) else (item[0], item[1])
            named = {m.split(".", 1)[0] for m in re.findall(r"\$\{([^!}][^}]*)\}", text)}
            found |= (named - set(local)) | _references(local)
        elif key == "Fn::If":
            found |= _references(item[1:])  # item[0] names a condition
        else:
            found |= _references(item)
    return found


def _refs(value: Any) -> set[str]:
    """`_references` without the pseudo parameters (AWS::Region, AWS::Partition…)."""
    return {name for name in _references(value) if not name.startswith("AWS::")}


def _dependencies(output: dict[str, Any]) -> dict[str, set[str]]:
    resources = output["Resources"]
    graph: dict[str, set[str]] = {}
    for name, resource in resources.items():
        depends_on = resource.get("DependsOn", [])
        named = set(_as_list(depends_on)) | _references(resource.get("Properties", {}))
        graph[name] = named & set(resources)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One dependency cycle, or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node) :] + [node]
        if node in done:
            return None
        for target in sorted(graph[node]):
            found = visit(target, [*path, node])
            if found:
                return found
        done.add(node)
        return None

    for node in sorted(graph):
        found = visit(node, [])
        if found:
            return found
    return None


def test_every_reference_names_a_parameter_or_resource(transformed: dict[str, Any]) -> None:
    known = set(transformed["Parameters"]) | set(transformed["Resources"])
    for section in ("Resources", "Outputs"):
        for name, item in transformed[section].items():
            unknown = {r for r in _refs(item) if r not in known}
            assert not unknown, f"{section}.{name} references {unknown}"


def test_resources_have_no_circular_dependency(transformed: dict[str, Any]) -> None:
    assert _cycle(_dependencies(transformed)) is None


def test_the_cycle_check_finds_the_api_referencing_its_own_url() -> None:
    """Guards the test above: the cycle NOT_SET_ON avoids, which cfn-lint does not report."""
    text = TEMPLATE.read_text()
    anchor = "          HOTBATCH_SPLIT_FUNCTION_NAME: !Ref SplitFunction\n"
    assert anchor in text
    cyclic = text.replace(anchor, anchor + '          HOTBATCH_PUBLIC_URL: !Sub "${HttpApi}"\n')
    cycle = _cycle(_dependencies(_transform(cyclic)))
    assert cycle is not None and {"ApiFunction", "HttpApi"} <= set(cycle)


def test_transform_makes_five_python_functions_on_one_architecture(
    transformed: dict[str, Any],
) -> None:
    functions = _of_type(transformed, "AWS::Lambda::Function")
    assert set(functions) == set(FUNCTIONS)
    expected = {
        "ApiFunction": ("control_plane.entrypoints.api.handler", 30),
        "SplitFunction": ("control_plane.entrypoints.split.handler", 900),
        "TickFunction": ("control_plane.entrypoints.sweep.handler", 300),
        "DispatchFunction": ("control_plane.entrypoints.queues.dispatch_handler", 60),
        "BatchFunction": ("control_plane.entrypoints.queues.batch_handler", 300),
    }
    (layer,) = _of_type(transformed, "AWS::Lambda::LayerVersion").values()
    for name, (handler, timeout) in expected.items():
        props = functions[name]["Properties"]
        assert (props["Handler"], props["Timeout"]) == (handler, timeout)
        assert props["Runtime"] == "python3.11"
        assert props["Architectures"] == layer["Properties"]["CompatibleArchitectures"]
        assert len(props["Layers"]) == 1
    # The split must hold a 1M-id duplicate set and a chunk, and gets a full vCPU.
    assert functions["SplitFunction"]["Properties"]["MemorySize"] >= 1769


def test_only_the_api_and_the_batch_handler_start_splits_and_nothing_invokes_the_tick(
    transformed: dict[str, Any],
) -> None:
    for function in ("ApiFunction", "BatchFunction"):  # a new batch; a stale split again
        invokable = _resources_for(transformed, function, "lambda:InvokeFunction")
        assert _refs(invokable) == {"SplitFunction"} and len(invokable) == 1, function
    for function in ("SplitFunction", "TickFunction", "DispatchFunction"):
        assert _resources_for(transformed, function, "lambda:InvokeFunction") == []


@pytest.mark.parametrize(
    ("function", "queues"),
    [
        ("ApiFunction", {"DispatchQueue", "BatchQueue"}),  # results, cancels, redrives
        ("SplitFunction", {"DispatchQueue"}),  # a split's new work
        ("TickFunction", {"DispatchQueue", "BatchQueue"}),  # top-ups, due batches
        ("DispatchFunction", {"DispatchQueue"}),  # its own "continue"
        ("BatchFunction", {"DispatchQueue"}),  # work found waiting, cancelled jobs' slots
    ],
)
def test_each_function_sends_exactly_the_events_it_makes(
    transformed: dict[str, Any], function: str, queues: set[str]
) -> None:
    # SAM's SQSSendMessagePolicy grants sqs:SendMessage* on exactly the queue named.
    assert _refs(_resources_for(transformed, function, "sqs:SendMessage*")) == queues


def test_each_event_queue_feeds_its_one_handler_as_a_fifo_queue(
    transformed: dict[str, Any],
) -> None:
    mappings = _of_type(transformed, "AWS::Lambda::EventSourceMapping").values()
    fed = {
        (
            _refs(m["Properties"]["EventSourceArn"]).pop(),
            _refs(m["Properties"]["FunctionName"]).pop(),
        )
        for m in mappings
    }
    assert fed == {("DispatchQueue", "DispatchFunction"), ("BatchQueue", "BatchFunction")}
    queues = _of_type(transformed, "AWS::SQS::Queue")
    for name in ("DispatchQueue", "BatchQueue"):
        props = queues[name]["Properties"]
        # FIFO message groups are what make one run per endpoint (or batch) at a time.
        assert props["FifoQueue"] is True and props["ContentBasedDeduplication"] is True
        assert _refs(props["RedrivePolicy"]["deadLetterTargetArn"]) == {
            name.replace("Queue", "DeadLetters")
        }
    functions = _of_type(transformed, "AWS::Lambda::Function")
    for queue, function in (("DispatchQueue", "DispatchFunction"), ("BatchQueue", "BatchFunction")):
        timeout = functions[function]["Properties"]["Timeout"]
        # Lambda refuses a mapping whose queue's visibility timeout is below its function's.
        assert queues[queue]["Properties"]["VisibilityTimeout"] > timeout


@pytest.mark.parametrize("function", FUNCTIONS)
def test_every_function_reaches_exactly_the_table_and_the_bucket(
    transformed: dict[str, Any], function: str
) -> None:
    assert _refs(_resources_for(transformed, function, "dynamodb:UpdateItem")) == {"Table"}
    assert _refs(_resources_for(transformed, function, "dynamodb:Query")) == {"Table"}
    # Catches `S3CrudPolicy: {Bucket: ...}` (the key is BucketName), which cfn-lint accepts.
    assert _refs(_resources_for(transformed, function, "s3:PutObject")) == {"Bucket"}
    assert _refs(_resources_for(transformed, function, "s3:GetObject")) == {"Bucket"}


@pytest.mark.parametrize(
    ("function", "multipart", "secrets"),
    [
        # Presigned multipart uploads (abort, list parts); RunPod's webhooks only: the API never
        # calls RunPod, and the key would queue jobs and read every job's input.
        ("ApiFunction", {"s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"}, {"Webhook"}),
        ("SplitFunction", set(), set()),
        ("TickFunction", set(), {"RunPodApiKey", "Webhook"}),
        ("DispatchFunction", set(), {"RunPodApiKey", "Webhook"}),
        ("BatchFunction", {"s3:AbortMultipartUpload"}, {"RunPodApiKey", "Webhook"}),  # the merge
    ],
)
def test_multipart_and_secret_permissions_are_per_function(
    transformed: dict[str, Any], function: str, multipart: set[str], secrets: set[str]
) -> None:
    for action in ("s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"):
        granted = _resources_for(transformed, function, action)
        assert _refs(granted) == ({"Bucket"} if action in multipart else set()), action
    secret_resources = _resources_for(transformed, function, "secretsmanager:GetSecretValue")
    assert _refs(secret_resources) == {f"{name}SecretArn" for name in secrets}
    assert len(secret_resources) == len(secrets)  # one exact ARN each, no wildcard next to them


def test_the_internet_facing_api_cannot_read_the_runpod_api_key(
    transformed: dict[str, Any],
) -> None:
    statements = _statements(transformed, "ApiFunction")
    reads_secrets = [
        statement
        for statement in statements
        if any(action.startswith("secretsmanager:") for action in _as_list(statement["Action"]))
    ]
    assert reads_secrets and all(
        _refs(statement["Resource"]) == {"WebhookSecretArn"} for statement in reads_secrets
    )
    assert "RunPodApiKeySecretArn" not in _refs(statements)


# What the code calls, as IAM actions: get_object and head_object (GetObject); put_object,
# upload_fileobj, create_multipart_upload, upload_part(_copy), complete_multipart_upload and
# copy_object (PutObject, GetObject on the source); delete_object(s); abort_multipart_upload;
# list_parts; list_objects_v2 (ListBucket, which also makes a missing key a 404).
S3_ACTIONS_USED = {
    "s3:GetObject",
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
    "s3:ListBucket",
}


@pytest.mark.parametrize("function", FUNCTIONS)
def test_functions_get_only_the_s3_actions_the_code_calls(
    transformed: dict[str, Any], function: str
) -> None:
    granted = {
        action
        for statement in _statements(transformed, function)
        for action in _as_list(statement["Action"])
        if action.startswith("s3:")
    }
    assert granted <= S3_ACTIONS_USED, granted - S3_ACTIONS_USED
    # S3CrudPolicy's extras: rewriting the bucket's lifecycle rules or an object's ACL.
    assert not granted & {"s3:PutLifecycleConfiguration", "s3:PutObjectAcl", "s3:DeleteBucket"}
    assert _refs(_resources_for(transformed, function, "s3:ListBucket")) <= {"Bucket"}


def test_the_bucket_refuses_requests_without_tls(transformed: dict[str, Any]) -> None:
    (policy,) = _of_type(transformed, "AWS::S3::BucketPolicy").values()
    assert _refs(policy["Properties"]["Bucket"]) == {"Bucket"}
    (deny,) = [
        statement
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        if statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    ]
    assert deny["Effect"] == "Deny" and deny["Principal"] == "*" and deny["Action"] == "s3:*"
    # The bucket itself and every object in it.
    assert deny["Resource"] == [
        {"Fn::GetAtt": ["Bucket", "Arn"]},
        {"Fn::Sub": "${Bucket.Arn}/*"},
    ]


def _positive_default(template: dict[str, Any], parameter: str) -> int:
    default = int(template["Parameters"][parameter]["Default"])
    assert default > 0, parameter
    return default


def test_http_api_throttles_every_route(
    transformed: dict[str, Any], template: dict[str, Any]
) -> None:
    (stage,) = _of_type(transformed, "AWS::ApiGatewayV2::Stage").values()
    assert stage["Properties"]["DefaultRouteSettings"] == {
        "ThrottlingBurstLimit": {"Ref": "ApiThrottlingBurstLimit"},
        "ThrottlingRateLimit": {"Ref": "ApiThrottlingRateLimit"},
    }
    burst = _positive_default(template, "ApiThrottlingBurstLimit")
    assert burst >= _positive_default(template, "ApiThrottlingRateLimit")


@pytest.mark.parametrize(
    ("function", "parameter", "least"),
    [
        ("ApiFunction", "ApiReservedConcurrency", 1),  # a cap, on by default
        ("TickFunction", "TickReservedConcurrency", 2),  # kept for the sweep, on by default
        ("DispatchFunction", "DispatchReservedConcurrency", 0),
        ("BatchFunction", "BatchReservedConcurrency", 0),
    ],
)
def test_reserved_concurrency_is_a_parameter_that_zero_leaves_unset(
    transformed: dict[str, Any], template: dict[str, Any], function: str, parameter: str, least: int
) -> None:
    reserved = _of_type(transformed, "AWS::Lambda::Function")[function]["Properties"][
        "ReservedConcurrentExecutions"
    ]
    condition, value, otherwise = reserved["Fn::If"]
    assert value == {"Ref": parameter} and otherwise == {"Ref": "AWS::NoValue"}
    assert transformed["Conditions"][condition] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": parameter}, 0]}]
    }
    assert int(template["Parameters"][parameter]["Default"]) >= least
    assert template["Parameters"][parameter]["MinValue"] == 0
    if function in ("DispatchFunction", "BatchFunction"):
        # SQS never hands the function more runs than it may have (a throttled delivery counts
        # towards the dead letters).
        (mapping,) = [
            m
            for m in _of_type(transformed, "AWS::Lambda::EventSourceMapping").values()
            if m["Properties"]["FunctionName"] == {"Ref": function}
        ]
        assert mapping["Properties"]["ScalingConfig"] == {
            "Fn::If": [condition, {"MaximumConcurrency": {"Ref": parameter}}, otherwise]
        }


@pytest.mark.parametrize("function", FUNCTIONS)
def test_no_inline_statement_grants_a_wildcard(transformed: dict[str, Any], function: str) -> None:
    for statement in _statements(transformed, function):
        assert "*" not in _as_list(statement["Resource"]), statement
        assert not any(action.endswith(":*") for action in _as_list(statement["Action"]))


def test_http_api_sends_root_and_every_path_to_the_api_function(
    transformed: dict[str, Any],
) -> None:
    (api,) = _of_type(transformed, "AWS::ApiGatewayV2::Api").values()
    paths = api["Properties"]["Body"]["paths"]
    assert set(paths) == {"/", "/{proxy+}"}
    for path in paths.values():
        integration = path["x-amazon-apigateway-any-method"]["x-amazon-apigateway-integration"]
        assert _refs(integration["uri"]) == {"ApiFunction"}
        assert integration["payloadFormatVersion"] == "2.0"
    permissions = _of_type(transformed, "AWS::Lambda::Permission").values()
    assert {p["Properties"]["FunctionName"]["Ref"] for p in permissions} == {"ApiFunction"}


def test_tick_runs_on_an_enabled_scheduler_rate(transformed: dict[str, Any]) -> None:
    (schedule,) = _of_type(transformed, "AWS::Scheduler::Schedule").values()
    props = schedule["Properties"]
    assert props["State"] == "ENABLED"
    assert props["Target"]["Arn"] == {"Fn::GetAtt": ["TickFunction", "Arn"]}
    assert "Name" not in props  # a fixed name would collide between two stacks in one account
    condition, every_minute, otherwise = props["ScheduleExpression"]["Fn::If"]
    assert condition == "TickEveryMinute" and every_minute == "rate(1 minute)"
    assert otherwise == {"Fn::Sub": "rate(${TickRateMinutes} minutes)"}


def test_split_is_retried_and_a_lost_tick_is_not(transformed: dict[str, Any]) -> None:
    configs = {
        res["Properties"]["FunctionName"]["Ref"]: res["Properties"]
        for res in _of_type(transformed, "AWS::Lambda::EventInvokeConfig").values()
    }
    assert configs["SplitFunction"]["MaximumRetryAttempts"] == 2
    assert configs["TickFunction"]["MaximumRetryAttempts"] == 0


def test_outputs_name_what_a_deployer_needs(transformed: dict[str, Any]) -> None:
    outputs = transformed["Outputs"]
    assert set(outputs) >= {"ApiUrl", "TableName", "BucketName", "SplitFunctionName"}
    assert "TickFunctionName" in outputs
    assert _refs(outputs["ApiUrl"]["Value"]) == {"HttpApi"}


def test_secrets_are_passed_by_arn_and_never_resolved_into_the_template(
    template: dict[str, Any],
) -> None:
    parameters = template["Parameters"]
    assert not [name for name, p in parameters.items() if p.get("NoEcho")]
    assert "resolve:secretsmanager" not in TEMPLATE.read_text()
    for name in SECRET_PARAMETERS:
        pattern = parameters[name]["AllowedPattern"]
        assert re.fullmatch(pattern, EXAMPLE_PARAMETERS[name])
        assert not re.fullmatch(pattern, "rpa_not-an-arn-but-a-key-value")
        assert "Default" not in parameters[name]
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    assert env["HOTBATCH_RUNPOD_API_KEY_SECRET"] == {"Ref": "RunPodApiKeySecretArn"}
    assert env["HOTBATCH_WEBHOOK_SECRET"] == {"Ref": "WebhookSecretArn"}


# --- 3. drift between the template, the settings and the code ------------------------------


def _environment(template: dict[str, Any], function: str) -> dict[str, Any]:
    """What the function sees: Globals' variables, then its own on top (SAM merges them)."""
    shared = template["Globals"]["Function"]["Environment"]["Variables"]
    own = template["Resources"][function]["Properties"].get("Environment", {}).get("Variables", {})
    return {**shared, **own}


@pytest.mark.parametrize("function", FUNCTIONS)
def test_every_setting_is_set_on_every_function(template: dict[str, Any], function: str) -> None:
    # Read at test time: settings added later are checked without touching this file.
    fields = set(Settings.model_fields) - LOCAL_ONLY
    exempt = {field for field, where in NOT_SET_ON.items() if function in where}
    env = _environment(template, function)
    missing = sorted(
        f"HOTBATCH_{field.upper()}"
        for field in fields - exempt
        if f"HOTBATCH_{field.upper()}" not in env
    )
    assert missing == [], f"{function} lacks {missing} (template.yaml, Globals or the function)"


def test_exempted_settings_are_really_absent_where_exempted(template: dict[str, Any]) -> None:
    for field, where in NOT_SET_ON.items():
        for function in where:
            assert function in FUNCTIONS
            assert f"HOTBATCH_{field.upper()}" not in _environment(template, function)


def _parameter_variants(parameters: dict[str, Any]) -> Iterator[tuple[str, dict[str, str]]]:
    """Defaults; every Number at its MinValue, then its MaxValue; every AllowedValue alone."""
    defaults = {
        name: str(p.get("Default", EXAMPLE_PARAMETERS.get(name, "")))
        for name, p in parameters.items()
    }
    yield "defaults", defaults
    for bound in ("MinValue", "MaxValue"):
        yield bound, {name: str(p.get(bound, defaults[name])) for name, p in parameters.items()}
    for name, p in parameters.items():
        for allowed in p.get("AllowedValues", []):
            yield f"{name}={allowed}", {**defaults, name: str(allowed)}


def _resolve(value: Any, parameters: dict[str, str]) -> str:
    """An environment value as the deployed function would see it (resources by a stand-in)."""
    if isinstance(value, dict) and "Ref" in value:
        return parameters.get(value["Ref"], f"hotbatch-{value['Ref']}")
    if isinstance(value, dict) and "Fn::Sub" in value:
        return re.sub(
            r"\$\{([^}]+)\}", lambda m: parameters.get(m[1], f"sub-{m[1]}"), value["Fn::Sub"]
        )
    assert not isinstance(value, dict | list), f"unexpected intrinsic {value}"
    return str(value)


@pytest.mark.parametrize("function", FUNCTIONS)
def test_parameter_defaults_and_bounds_are_valid_settings(
    template: dict[str, Any], function: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [name for name in os.environ if name.upper().startswith("HOTBATCH_")]:
        monkeypatch.delenv(name)
    checked = 0
    for variant, parameters in _parameter_variants(template["Parameters"]):
        env = {k: _resolve(v, parameters) for k, v in _environment(template, function).items()}
        with monkeypatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            settings = Settings()  # raises on a value outside a field's bounds or choices
        assert settings.max_requests_per_batch == int(env["HOTBATCH_MAX_REQUESTS_PER_BATCH"]), (
            variant
        )
        checked += 1
    assert checked > 3


def _handlers(template: dict[str, Any]) -> list[str]:
    functions = resources_of_type(template, "AWS::Serverless::Function").values()
    return sorted(function["Properties"]["Handler"] for function in functions)


@pytest.mark.parametrize("handler", _handlers(load_template()))
def test_every_handler_names_a_module_level_handler(handler: str) -> None:
    module, _, attribute = handler.rpartition(".")
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"{module} (template.yaml Handler) does not exist"
    tree = ast.parse(Path(spec.origin).read_text())
    names = {
        target.id
        for node in tree.body
        if isinstance(node, ast.Assign | ast.AnnAssign)
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Name)
    } | {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert attribute in names, f"{module} defines no top-level `{attribute}`"


def _requirement(line: str) -> str:
    return re.sub(r"\s+", "", line.split("#", 1)[0]).lower()


def test_lambda_layer_requirements_are_the_control_plane_dependencies(
    template: dict[str, Any],
) -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    expected = {
        _requirement(r)
        for r in pyproject["dependencies"] + pyproject["optional-dependencies"]["control-plane"]
    }
    (layer,) = resources_of_type(template, "AWS::Serverless::LayerVersion").values()
    requirements = REPO / layer["Properties"]["ContentUri"] / "requirements.txt"
    listed = {_requirement(line) for line in requirements.read_text().splitlines()} - {""}
    assert listed == expected
    assert (
        layer["Metadata"]["BuildArchitecture"] in template["Globals"]["Function"]["Architectures"]
    )


# --- 4. the local stack is built from the template ------------------------------------------


@pytest.fixture()
def local_stack(
    monkeypatch: pytest.MonkeyPatch, template: dict[str, Any]
) -> Iterator[tuple[Any, Any]]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    read_template_once(template, monkeypatch)
    with mock_aws(config=KEEP_BOTO3_SESSION):
        dynamodb = boto3.client("dynamodb", region_name=REGION)
        s3 = boto3.client("s3", region_name=REGION)
        create_resources(dynamodb=dynamodb, s3=s3, table_name="hotbatch-t", bucket_name="hb-t")
        yield dynamodb, s3


def _properties(template: dict[str, Any], kind: str) -> dict[str, Any]:
    (resource,) = resources_of_type(template, kind).values()
    properties: dict[str, Any] = copy.deepcopy(resource["Properties"])
    return properties


def test_local_table_has_the_template_keys_indexes_and_ttl(
    template: dict[str, Any], local_stack: tuple[Any, Any]
) -> None:
    dynamodb, _ = local_stack
    expected = _properties(template, "AWS::DynamoDB::Table")
    table = dynamodb.describe_table(TableName="hotbatch-t")["Table"]

    assert table["KeySchema"] == expected["KeySchema"]

    def by_name(items: list[dict[str, Any]]) -> dict[str, str]:
        return {item["AttributeName"]: item["AttributeType"] for item in items}

    assert by_name(table["AttributeDefinitions"]) == by_name(expected["AttributeDefinitions"])
    assert {
        index["IndexName"]: (index["KeySchema"], index["Projection"])
        for index in table["GlobalSecondaryIndexes"]
    } == {
        index["IndexName"]: (index["KeySchema"], index["Projection"])
        for index in expected["GlobalSecondaryIndexes"]
    }
    assert table["BillingModeSummary"]["BillingMode"] == expected["BillingMode"]
    ttl = dynamodb.describe_time_to_live(TableName="hotbatch-t")["TimeToLiveDescription"]
    assert ttl["AttributeName"] == expected["TimeToLiveSpecification"]["AttributeName"]
    assert ttl["TimeToLiveStatus"] == "ENABLED"


def test_local_bucket_has_the_template_encryption_access_block_and_lifecycle(
    template: dict[str, Any], local_stack: tuple[Any, Any]
) -> None:
    _, s3 = local_stack
    expected = _properties(template, "AWS::S3::Bucket")

    encryption = s3.get_bucket_encryption(Bucket="hb-t")["ServerSideEncryptionConfiguration"]
    assert [rule["ApplyServerSideEncryptionByDefault"] for rule in encryption["Rules"]] == [
        rule["ServerSideEncryptionByDefault"]
        for rule in expected["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    ]
    block = s3.get_public_access_block(Bucket="hb-t")["PublicAccessBlockConfiguration"]
    assert block == expected["PublicAccessBlockConfiguration"]
    ownership = s3.get_bucket_ownership_controls(Bucket="hb-t")["OwnershipControls"]
    assert ownership == expected["OwnershipControls"]

    retention = template["Parameters"]["ChunkRetentionDays"]["Default"]
    rules = {
        rule["ID"]: rule for rule in s3.get_bucket_lifecycle_configuration(Bucket="hb-t")["Rules"]
    }
    assert set(rules) == {rule["Id"] for rule in expected["LifecycleConfiguration"]["Rules"]}
    for want in expected["LifecycleConfiguration"]["Rules"]:
        got = rules[want["Id"]]
        assert got["Status"] == want["Status"]
        assert got["Filter"].get("Prefix", "") == want.get("Prefix", "")
        if "ExpirationInDays" in want:
            days = want["ExpirationInDays"]
            if isinstance(days, dict):  # chunk objects: the retention parameter
                assert days == {"Ref": "ChunkRetentionDays"}
                days = retention
            assert got["Expiration"] == {"Days": days}
        else:
            assert "Expiration" not in got
        assert got.get("AbortIncompleteMultipartUpload") == want.get(
            "AbortIncompleteMultipartUpload"
        )


# --- 5. alarms ------------------------------------------------------------------------------

# The functions nobody waits on: their failures are silent unless an alarm says so. The API's
# failures are answers (500s) that its clients see.
UNWATCHED_FUNCTIONS = {"ApiFunction"}
NOTIFY = {"Fn::If": ["AlarmNotifies", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]}
EMITTERS = ("count", "seconds")  # control_plane.observability's metric functions


def _alarms(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: resource["Properties"]
        for name, resource in resources_of_type(template, "AWS::CloudWatch::Alarm").items()
    }


def _metric_names(node: ast.expr) -> set[str] | None:
    """The metric names an argument can be: a literal, or a conditional between literals; None
    when it is computed (the scan cannot read it)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.IfExp):
        body, orelse = _metric_names(node.body), _metric_names(node.orelse)
        return None if body is None or orelse is None else body | orelse
    return None


def _metric_arguments(tree: ast.Module) -> Iterator[ast.expr | None]:
    """The name argument of every call that emits a metric: observability's `count` and
    `seconds` however imported, and powertools' `add_metric`; None for a call without one."""
    module = observability.__name__
    package, _, leaf = module.rpartition(".")
    functions: set[str] = set()  # local names of count / seconds
    modules: set[str] = set()  # local names of the observability module
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == module:
            functions |= {
                alias.asname or alias.name for alias in node.names if alias.name in EMITTERS
            }
        elif isinstance(node, ast.ImportFrom) and node.module == package:
            modules |= {alias.asname or alias.name for alias in node.names if alias.name == leaf}
        elif isinstance(node, ast.Import):
            modules |= {
                alias.asname for alias in node.names if alias.name == module and alias.asname
            }
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        emits = (isinstance(func, ast.Name) and func.id in functions) or (
            isinstance(func, ast.Attribute)
            and (
                func.attr == "add_metric"
                or (
                    func.attr in EMITTERS
                    and isinstance(func.value, ast.Name)
                    and func.value.id in modules
                )
            )
        )
        if emits:
            named = [kw.value for kw in node.keywords if kw.arg == "name"]
            arguments: list[ast.expr] = node.args[:1] or named
            yield arguments[0] if arguments else None


def _scan_metrics(sources: dict[str, str]) -> tuple[set[str], list[str]]:
    """(metric names emitted, where a call's name could not be read) over `sources`."""
    names: set[str] = set()
    unreadable: list[str] = []
    for where, text in sources.items():
        tree = ast.parse(text)
        for argument in _metric_arguments(tree):
            found = None if argument is None else _metric_names(argument)
            if found is None:
                unreadable.append(f"{where}:{getattr(argument, 'lineno', '?')}")
            else:
                names |= found
    return names, unreadable


def _control_plane_sources() -> dict[str, str]:
    """Every module of the control plane but observability itself (its `add_metric` takes the
    name its callers give)."""
    root = REPO / "control_plane"
    skip = Path(observability.__file__).resolve()
    return {
        str(path.relative_to(REPO)): path.read_text()
        for path in sorted(root.rglob("*.py"))
        if path.resolve() != skip
    }


@pytest.fixture(scope="module")
def emitted_metrics() -> set[str]:
    names, unreadable = _scan_metrics(_control_plane_sources())
    assert unreadable == [], f"metric names the scan cannot read: {unreadable}"
    return names


def _emitted_dimensions(service: str) -> list[list[str]]:
    """The dimension sets powertools writes into an EMF record, on a function whose
    POWERTOOLS_SERVICE_NAME is `service` (the metric set is shared: cleared after)."""
    from aws_lambda_powertools import Metrics
    from aws_lambda_powertools.metrics import MetricUnit

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("POWERTOOLS_SERVICE_NAME", service)
        probe = Metrics(namespace=observability.NAMESPACE)
        try:
            probe.add_metric(name="Probe", unit=MetricUnit.Count, value=1)
            record = probe.serialize_metric_set()
        finally:
            probe.clear_metrics()
    (directive,) = record["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == observability.NAMESPACE
    dimensions: list[list[str]] = directive["Dimensions"]
    return dimensions


def test_the_metric_scan_reads_names_however_the_emitter_is_imported() -> None:
    """Guards the alarm tests below against a scan that silently finds nothing."""
    source = (
        f"from {observability.__name__} import count as tally, seconds\n"
        f"from {observability.__name__.rpartition('.')[0]} import observability as obs\n"
        "tally('A')\n"
        "seconds('B' if ok else 'C', 1.0)\n"
        "obs.count('D')\n"
        "metrics.add_metric(name='E', unit=unit, value=1)\n"
        "tally(name_of_the_day)\n"
        "count('not observability')\n"
    )
    names, unreadable = _scan_metrics({"example.py": source})
    assert names == {"A", "B", "C", "D", "E"}
    assert unreadable == ["example.py:7"]


def test_every_alarm_notifies_the_topic_only_when_one_is_given(
    template: dict[str, Any],
) -> None:
    alarms = _alarms(template)
    assert alarms
    assert template["Conditions"]["AlarmNotifies"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmTopicArn"}, ""]}]
    }
    names = []
    for name, props in alarms.items():
        assert props["AlarmActions"] == NOTIFY and props["OKActions"] == NOTIFY, name
        # hotbatch's own metrics emit nothing while nothing happens (a count of 0 is skipped).
        assert props["TreatMissingData"] == "notBreaching", name
        assert props["ComparisonOperator"] == "GreaterThanOrEqualToThreshold", name
        assert props.get("DatapointsToAlarm", 1) <= props["EvaluationPeriods"], name
        # Named after the stack: two stacks in one account never collide, and a page says which.
        sub = props["AlarmName"]["Fn::Sub"]
        assert sub.startswith("${AWS::StackName}-"), name
        names.append(sub)
    assert len(set(names)) == len(names)


def test_the_alarm_topic_parameter_takes_an_sns_topic_arn_or_nothing(
    template: dict[str, Any],
) -> None:
    parameter = template["Parameters"]["AlarmTopicArn"]
    assert parameter["Default"] == ""
    pattern = parameter["AllowedPattern"]
    assert re.fullmatch(pattern, "")
    assert re.fullmatch(pattern, "arn:aws:sns:eu-west-1:123456789012:hotbatch-alarms")
    for wrong in ("hotbatch-alarms", EXAMPLE_PARAMETERS["WebhookSecretArn"], "arn:aws:sns:x"):
        assert not re.fullmatch(pattern, wrong), wrong


def test_every_function_nobody_waits_on_has_an_errors_alarm(template: dict[str, Any]) -> None:
    watched = {}
    for name, props in _alarms(template).items():
        if props["Namespace"] != "AWS/Lambda":
            continue
        assert props["MetricName"] == "Errors" and props["Statistic"] == "Sum", name
        (dimension,) = props["Dimensions"]
        assert dimension["Name"] == "FunctionName", name
        watched[dimension["Value"]["Ref"]] = name
    assert set(watched) == set(FUNCTIONS) - UNWATCHED_FUNCTIONS


def test_every_dead_letter_queue_has_an_alarm(template: dict[str, Any]) -> None:
    queues = resources_of_type(template, "AWS::SQS::Queue").values()
    dead_letter_queues = {
        _refs(queue["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]).pop()
        for queue in queues
        if "RedrivePolicy" in queue["Properties"]
    }
    assert dead_letter_queues
    watched = set()
    for name, props in _alarms(template).items():
        if props["Namespace"] != "AWS/SQS":
            continue
        assert props["MetricName"] in (
            "ApproximateNumberOfMessagesVisible",
            "ApproximateAgeOfOldestMessage",
        ), name
        assert props["Statistic"] == "Maximum", name
        (dimension,) = props["Dimensions"]
        assert dimension["Name"] == "QueueName", name
        queue, attribute = dimension["Value"]["Fn::GetAtt"]
        assert attribute == "QueueName", name
        watched.add(queue)
    assert watched == dead_letter_queues


def test_hotbatch_alarms_watch_metrics_the_code_emits_with_its_dimensions(
    template: dict[str, Any], emitted_metrics: set[str]
) -> None:
    service = template["Globals"]["Function"]["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"]
    values = {"service": service}
    emitted_dimensions = _emitted_dimensions(service)
    watched = set()
    for name, props in _alarms(template).items():
        assert props["Namespace"] in ("AWS/Lambda", "AWS/SQS", observability.NAMESPACE), name
        if props["Namespace"] != observability.NAMESPACE:
            continue
        assert props["MetricName"] in emitted_metrics, f"{name}: the code never emits it"
        # CloudWatch matches a metric on its exact set of dimensions.
        keys = [dimension["Name"] for dimension in props["Dimensions"]]
        assert [keys] == emitted_dimensions, name
        assert all(d["Value"] == values[d["Name"]] for d in props["Dimensions"]), name
        assert props["Statistic"] == "Sum", name
        watched.add(props["MetricName"])
    # Requests that failed for good, batches the control plane had to give up on, and an
    # endpoint's breaker opening.
    assert {"DeadLetters", "BatchesUnprocessable", "BreakerOpened"} <= watched


def test_the_dead_letters_alarm_threshold_is_a_parameter(template: dict[str, Any]) -> None:
    (props,) = [p for p in _alarms(template).values() if p["MetricName"] == "DeadLetters"]
    assert props["Threshold"] == {"Ref": "DeadLettersAlarmThreshold"}
    parameter = template["Parameters"]["DeadLettersAlarmThreshold"]
    assert parameter["MinValue"] >= 1 and parameter["Default"] >= parameter["MinValue"]


def test_the_transform_keeps_every_alarm(
    template: dict[str, Any], transformed: dict[str, Any]
) -> None:
    assert set(_of_type(transformed, "AWS::CloudWatch::Alarm")) == set(_alarms(template))
