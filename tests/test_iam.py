"""The IAM policies in ``iam/`` are well formed, allow every AWS call the code makes, and no more.

The calls are recorded, not listed by hand: real code paths (the SageMaker launcher's Pipes client,
the S3 object store, s3transfer's managed transfers) run against the moto server and the fake
SageMaker, a botocore ``before-call`` handler on every product client records each operation with
its parameters, and the fake's ``calls`` records what reached SageMaker. Each call is mapped to the
IAM action(s) and resource ARN(s) AWS authorizes it against, and a small policy evaluator decides
it against the policy with its placeholders filled in.

- Dagster's role: every recorded call is allowed, and every action and resource of the policy is
  needed by at least one recorded call (a short allow-list below says why the others are there).
- The execution role: what the fake does on SageMaker's behalf (staging inputs, uploading outputs,
  writing the job's log) is allowed. The job process's own S3 calls (Pipes context and messages)
  happen in a subprocess and are not recorded.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import textwrap
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote

import dagster as dg
import dagster._core.pipes.utils as pipes_utils
import pytest
from dagster_pipes import decode_param

import resources.storage as storage_module
from forecast_assets import paths, publication
from forecast_assets.assets.common import stage_batch_file
from resources.jobs.requests import (
    JobInput,
    JobOutput,
    model_artifact_uri,
    output_data_uri,
    processing_job_request,
    training_job_request,
)
from resources.jobs.sagemaker import PipesSageMakerClient, SageMakerJobLauncher
from resources.jobs.settings import JobSettings
from resources.storage import S3ObjectStore
from tests.conftest import TEST_REGION
from tests.fake_sagemaker import FakeSageMakerClient

IAM_DIR = Path(__file__).resolve().parents[1] / "iam"
DAGSTER_POLICY = "dagster-role-policy.json"
EXECUTION_POLICY = "sagemaker-execution-role-policy.json"
POLICIES = (DAGSTER_POLICY, EXECUTION_POLICY)

ACCOUNT_ID = "123456789012"  # moto's account: the ARNs it returns carry it
PREFIX = "forecast-assets"
EXECUTION_ROLE_NAME = "forecast-sagemaker-execution"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT_ID}:role/{EXECUTION_ROLE_NAME}"
KMS_KEY_ARN = f"arn:aws:kms:{TEST_REGION}:{ACCOUNT_ID}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
PLACEHOLDERS = ("REGION", "ACCOUNT_ID", "BUCKET", "PREFIX", "EXECUTION_ROLE_NAME", "KMS_KEY_ARN")

# "Resource": "*" only for actions that have no resource-level permissions at all (iam/README.md).
STAR_RESOURCE_ACTIONS = frozenset({"ecr:GetAuthorizationToken", "cloudwatch:PutMetricData"})
CONDITION_OPERATORS = frozenset({"StringEquals", "StringLike", "Bool", "ArnLike", "ArnEquals"})

# Resources of the Dagster policy that no recorded call uses, and why they stay.
UNUSED_DAGSTER_RESOURCES_ALLOWED = {
    # DescribeLogStreams is documented against the log-group ARN (recorded as such); CloudWatch
    # Logs has also been seen to evaluate it against "log-group:<name>:log-stream:", which only
    # the ":*" form matches. Both are this one log group.
    "arn:aws:logs:{region}:{account}:log-group:/aws/sagemaker/ProcessingJobs:*",
    "arn:aws:logs:{region}:{account}:log-group:/aws/sagemaker/TrainingJobs:*",
}
# Actions of the Dagster policy that no recorded call uses, and why they stay. Empty: stops and
# the abort of a failed multipart upload are exercised below.
UNUSED_DAGSTER_ACTIONS_ALLOWED: dict[str, str] = {}

SETTINGS = JobSettings(
    image_uri=f"{ACCOUNT_ID}.dkr.ecr.{TEST_REGION}.amazonaws.com/forecast-assets/test:1",
    max_runtime_seconds=120,
)
BIG = 9 * 1024 * 1024  # past s3transfer's 8 MB multipart threshold


# A small IAM policy evaluator ------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One authorization AWS makes for a call: an action on a resource, with condition keys."""

    action: str
    resource: str
    context: tuple[tuple[str, str], ...] = ()
    origin: str = ""  # the call it comes from, for messages


def _wildcard(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    """IAM's matching: ``*`` is any run of characters (``/`` included), ``?`` any one."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.IGNORECASE if ignore_case else 0) is not None


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _condition_holds(condition: dict[str, dict[str, Any]], context: dict[str, str]) -> bool:
    """Every operator and key must hold (AND); any of a key's values may match (OR)."""
    for operator, tests in condition.items():
        if_exists = operator.endswith("IfExists")
        base = operator.removesuffix("IfExists")
        if base not in CONDITION_OPERATORS:
            raise ValueError(f"the test's evaluator does not know condition operator {operator}")
        for key, expected in tests.items():
            actual = context.get(key.lower())  # condition key names are case-insensitive
            if actual is None:
                if if_exists:
                    continue
                return False  # a missing key fails every non-IfExists operator
            values = [str(v) for v in _as_list(expected)]
            if base == "StringEquals":
                ok = actual in values
            elif base == "Bool":
                ok = actual.lower() in (v.lower() for v in values)
            else:  # StringLike, ArnLike, ArnEquals
                ok = any(_wildcard(v, actual) for v in values)
            if not ok:
                return False
    return True


def _statement_applies(statement: dict[str, Any], request: Request) -> bool:
    actions = _as_list(statement["Action"])
    if not any(_wildcard(a, request.action, ignore_case=True) for a in actions):
        return False
    if not any(_wildcard(r, request.resource) for r in _as_list(statement["Resource"])):
        return False
    context = {k.lower(): v for k, v in request.context}
    return _condition_holds(statement.get("Condition", {}), context)


def allowing_statements(policy: dict[str, Any], request: Request) -> list[str]:
    """Sids of the Allow statements that allow ``request``; [] if denied (implicitly or not)."""
    statements = policy["Statement"]
    if any(s["Effect"] == "Deny" and _statement_applies(s, request) for s in statements):
        return []
    return [
        s["Sid"] for s in statements if s["Effect"] == "Allow" and _statement_applies(s, request)
    ]


def load_policy(name: str, *, bucket: str = "test-bucket") -> dict[str, Any]:
    """The policy with its placeholders filled as iam/README.md says (like envsubst)."""
    text = (IAM_DIR / name).read_text()
    values = {
        "REGION": TEST_REGION,
        "ACCOUNT_ID": ACCOUNT_ID,
        "BUCKET": bucket,
        "PREFIX": PREFIX,
        "EXECUTION_ROLE_NAME": EXECUTION_ROLE_NAME,
        "KMS_KEY_ARN": KMS_KEY_ARN,
    }
    for key, value in values.items():
        text = text.replace("${" + key + "}", value)
    assert "${" not in text, f"{name}: a placeholder is left unfilled"
    return json.loads(text)


# (a) Well-formed, narrow documents ------------------------------------------------------------


@pytest.mark.parametrize("name", POLICIES)
def test_policy_is_a_well_formed_and_narrow_iam_document(name):
    raw = (IAM_DIR / name).read_text()
    document = json.loads(raw)
    assert set(document) == {"Version", "Statement"}
    assert document["Version"] == "2012-10-17"
    assert isinstance(document["Statement"], list) and document["Statement"]
    sids = [s.get("Sid") for s in document["Statement"]]
    assert len(set(sids)) == len(sids), "Sids must be unique"
    for statement in document["Statement"]:
        sid = statement.get("Sid")
        assert isinstance(sid, str) and re.fullmatch(r"[A-Za-z0-9]+", sid), f"bad Sid {sid!r}"
        assert set(statement) <= {"Sid", "Effect", "Action", "Resource", "Condition"}, sid
        assert {"Sid", "Effect", "Action", "Resource"} <= set(statement), sid
        assert statement["Effect"] in ("Allow", "Deny"), sid
        actions, resources = _as_list(statement["Action"]), _as_list(statement["Resource"])
        assert actions and resources, sid
        for action in actions:
            # Named actions only: no "*", no "sagemaker:*", not even "sagemaker:Describe*".
            assert re.fullmatch(r"[a-z0-9-]+:[A-Za-z0-9]+", action), f"{sid}: {action!r}"
        assert len(set(actions)) == len(actions), f"{sid}: an action is listed twice"
        if "*" in resources:
            assert resources == ["*"], f"{sid}: '*' beside scoped resources"
            assert set(actions) <= STAR_RESOURCE_ACTIONS, (
                f"{sid}: Resource '*' is only for {sorted(STAR_RESOURCE_ACTIONS)}, "
                "which have no resource-level permissions"
            )
        else:
            for resource in resources:
                assert resource.startswith("arn:aws:") or resource == "${KMS_KEY_ARN}", (
                    f"{sid}: {resource!r}"
                )
                # No wildcard in the service-and-account part, except an ECR image of AWS's own.
                service_part = ":".join(resource.split(":")[:5])
                if "*" in service_part:
                    assert resource.startswith("arn:aws:ecr:${REGION}:*:repository/sagemaker-"), (
                        f"{sid}: {resource!r}"
                    )
        for operator in statement.get("Condition", {}):
            assert operator.removesuffix("IfExists") in CONDITION_OPERATORS, f"{sid}: {operator}"
    placeholders = set(re.findall(r"\$\{([^}]*)\}", raw))
    assert placeholders <= set(PLACEHOLDERS), placeholders - set(PLACEHOLDERS)
    load_policy(name)  # and filled in, it is still valid JSON with no placeholder left


def test_readme_documents_every_placeholder_and_every_star_resource():
    readme = (IAM_DIR / "README.md").read_text()
    for placeholder in PLACEHOLDERS:
        assert f"${{{placeholder}}}" in readme, placeholder
    for action in STAR_RESOURCE_ACTIONS:
        assert action in readme, action
    for name in POLICIES:
        assert name in readme


def test_the_dagster_policy_refuses_what_is_not_ours():
    """The evaluator is not vacuous, and the policy is as narrow as it claims."""
    policy = load_policy(DAGSTER_POLICY)
    jobs = f"arn:aws:sagemaker:{TEST_REGION}:{ACCOUNT_ID}"
    ours = f"arn:aws:s3:::test-bucket/{PREFIX}"
    allowed = [
        Request("sagemaker:CreateTrainingJob", f"{jobs}:training-job/fa-train-acme-1"),
        Request("s3:GetObject", f"{ours}/models/acme/x"),
        Request("s3:ListBucket", "arn:aws:s3:::test-bucket", (("s3:prefix", f"{PREFIX}/a/"),)),
        Request("iam:PassRole", ROLE_ARN, (("iam:PassedToService", "sagemaker.amazonaws.com"),)),
    ]
    refused = [
        Request("sagemaker:CreateTrainingJob", f"{jobs}:training-job/other-job"),
        Request("sagemaker:StopProcessingJob", f"{jobs}:processing-job/someone-elses"),
        Request("sagemaker:DeleteModel", f"{jobs}:model/fa-model"),
        Request("sagemaker:AddTags", f"{jobs}:endpoint/fa-endpoint"),
        Request("s3:GetObject", "arn:aws:s3:::test-bucket/other/x"),
        Request("s3:GetObject", f"arn:aws:s3:::test-bucket/{PREFIX}-other/x"),
        Request("s3:GetObject", f"arn:aws:s3:::other-bucket/{PREFIX}/x"),
        Request("s3:DeleteObject", f"{ours}/models/acme/model.tar.gz"),
        Request("s3:ListBucket", "arn:aws:s3:::test-bucket"),  # no prefix: the whole bucket
        Request("s3:ListBucket", "arn:aws:s3:::test-bucket", (("s3:prefix", "other/"),)),
        Request("iam:PassRole", ROLE_ARN),
        Request("iam:PassRole", ROLE_ARN, (("iam:PassedToService", "ec2.amazonaws.com"),)),
        Request(
            "iam:PassRole",
            f"arn:aws:iam::{ACCOUNT_ID}:role/admin",
            (("iam:PassedToService", "sagemaker.amazonaws.com"),),
        ),
        Request(
            "logs:GetLogEvents",
            f"arn:aws:logs:{TEST_REGION}:{ACCOUNT_ID}:log-group:/aws/sagemaker/TrainingJobs"
            ":log-stream:other-job/algo-1",
        ),
        Request(
            "logs:GetLogEvents",
            f"arn:aws:logs:{TEST_REGION}:{ACCOUNT_ID}:log-group:/aws/lambda/fa:log-stream:fa-x",
        ),
    ]
    for request in allowed:
        assert allowing_statements(policy, request), request
    for request in refused:
        assert not allowing_statements(policy, request), request


@pytest.mark.parametrize(
    "image_uri",
    [
        f"{ACCOUNT_ID}.dkr.ecr.{TEST_REGION}.amazonaws.com/forecast-assets/training:1",
        "",  # SageMaker's prebuilt scikit-learn image, in an account of AWS's
    ],
)
def test_the_execution_role_may_pull_the_job_image(aws_env, s3_store, image_uri):
    launcher = SageMakerJobLauncher(
        store=s3_store, region_name=TEST_REGION, training=JobSettings(image_uri=image_uri)
    )
    image = launcher.settings_for("training").image_uri
    match = re.fullmatch(r"(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com/([^:@]+)[:@].+", image)
    assert match, image
    account, region, repository = match.groups()
    arn = f"arn:aws:ecr:{region}:{account}:repository/{repository}"
    policy = load_policy(EXECUTION_POLICY)
    for action in ("BatchCheckLayerAvailability", "BatchGetImage", "GetDownloadUrlForLayer"):
        assert allowing_statements(policy, Request(f"ecr:{action}", arn)), (action, arn)
    assert allowing_statements(policy, Request("ecr:GetAuthorizationToken", "*"))


# Recording the calls --------------------------------------------------------------------------


@dataclass
class Call:
    """One API call a boto3 client made (or, for SageMaker, that reached the fake)."""

    principal: str  # "dagster" or "execution"
    service: str
    operation: str
    params: dict[str, Any]
    region: str
    status: int | None = None

    def __str__(self) -> str:
        shown = {k: v for k, v in self.params.items() if k not in ("Body", "Environment")}
        text = json.dumps(shown, default=str)
        return f"{self.principal}: {self.service} {self.operation} {text[:160]}"


@dataclass
class Recorder:
    calls: list[Call] = field(default_factory=list)

    def attach(self, client: Any, principal: str) -> Any:
        """Record every call ``client`` makes, as ``principal``."""
        region = client.meta.region_name
        service = client.meta.service_model.service_name  # "s3", "logs", ...

        def params_of(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
            context["iam_params"] = dict(params)  # the caller's parameters, before serializing

        def before_call(model: Any, context: dict[str, Any], **_: Any) -> None:
            call = Call(principal, service, model.name, context.get("iam_params", {}), region)
            context["iam_call"] = call
            self.calls.append(call)

        def after_call(http_response: Any, context: dict[str, Any], **_: Any) -> None:
            if "iam_call" in context:
                context["iam_call"].status = http_response.status_code

        events = client.meta.events
        events.register("before-parameter-build", params_of, unique_id=f"iam-params-{id(self)}")
        events.register("before-call", before_call, unique_id=f"iam-before-{id(self)}")
        events.register("after-call", after_call, unique_id=f"iam-after-{id(self)}")
        return client

    def add_sagemaker(self, fake: FakeSageMakerClient) -> None:
        region = fake.meta.region_name
        for operation, params in fake.calls:
            self.calls.append(Call("dagster", "sagemaker", operation, params, region, 200))


# Calls to IAM requests ------------------------------------------------------------------------


def _s3_object(bucket: str, key: str) -> str:
    return f"arn:aws:s3:::{bucket}/{key}"


def _copy_source(source: Any) -> str:
    if isinstance(source, dict):
        return _s3_object(source["Bucket"], source["Key"])
    bucket, _, key = unquote(str(source)).lstrip("/").partition("/")
    return _s3_object(bucket, key.split("?versionId=")[0])


S3_OBJECT_ACTIONS = {
    "GetObject": ["s3:GetObject"],
    "HeadObject": ["s3:GetObject"],
    "PutObject": ["s3:PutObject"],
    "CreateMultipartUpload": ["s3:PutObject"],
    "UploadPart": ["s3:PutObject"],
    "CompleteMultipartUpload": ["s3:PutObject"],
    "CopyObject": ["s3:PutObject"],  # + s3:GetObject on the source
    "UploadPartCopy": ["s3:PutObject"],  # + s3:GetObject on the source
    "AbortMultipartUpload": ["s3:AbortMultipartUpload"],
    "DeleteObject": ["s3:DeleteObject"],
}


def iam_requests(call: Call) -> list[Request]:
    """What AWS authorizes ``call`` against. An operation not mapped here fails the test."""
    p, origin = call.params, str(call)
    region, account = call.region, ACCOUNT_ID
    if call.service == "s3":
        if call.operation in ("ListObjectsV2", "ListObjects"):
            context = (("s3:prefix", p["Prefix"]),) if "Prefix" in p else ()
            return [Request("s3:ListBucket", f"arn:aws:s3:::{p['Bucket']}", context, origin)]
        if call.operation in S3_OBJECT_ACTIONS:
            target = _s3_object(p["Bucket"], p["Key"])
            out = [Request(a, target, (), origin) for a in S3_OBJECT_ACTIONS[call.operation]]
            if "CopySource" in p:
                out.append(Request("s3:GetObject", _copy_source(p["CopySource"]), (), origin))
            return out
    if call.service == "logs":
        group = f"arn:aws:logs:{region}:{account}:log-group:{p.get('logGroupName')}"
        if call.operation in ("DescribeLogStreams", "CreateLogGroup"):
            return [Request(f"logs:{call.operation}", group, (), origin)]
        if call.operation in ("GetLogEvents", "PutLogEvents", "CreateLogStream"):
            stream = f"{group}:log-stream:{p['logStreamName']}"
            return [Request(f"logs:{call.operation}", stream, (), origin)]
    if call.service == "sagemaker":
        kind = "processing" if "Processing" in call.operation else "training"
        name = p.get(f"{kind.capitalize()}JobName", "")
        # SageMaker job ARNs carry the name in lower case.
        job = f"arn:aws:sagemaker:{region}:{account}:{kind}-job/{name.lower()}"
        if re.fullmatch(r"(Create|Describe|Stop)(Processing|Training)Job", call.operation):
            out = [Request(f"sagemaker:{call.operation}", job, (), origin)]
            if call.operation.startswith("Create"):
                if p.get("Tags"):  # tag-on-create is also authorized as AddTags
                    out.append(Request("sagemaker:AddTags", job, (), origin))
                out.append(
                    Request(
                        "iam:PassRole",
                        p["RoleArn"],
                        (("iam:PassedToService", "sagemaker.amazonaws.com"),),
                        origin,
                    )
                )
            return out
    raise AssertionError(f"no IAM mapping for {call.service} {call.operation}: add one ({call})")


# The workload ---------------------------------------------------------------------------------

PROCESSING_SCRIPT = """
import sys
from pathlib import Path
from forecast_core.runtime import run_job

def main(report):
    files = sorted(p.name for p in Path(sys.argv[1]).iterdir())
    Path(sys.argv[2], "files.txt").write_text("\\n".join(files))
    print("staged", files, flush=True)
    report.materialization({"files": len(files)})

run_job("processing", main)
"""
TRAINING_SCRIPT = """
import os
from pathlib import Path
from forecast_core.runtime import run_job

def main(report):
    rows = Path(os.environ["SM_CHANNEL_TRAIN"], "load.parquet").read_bytes()
    Path(os.environ["SM_MODEL_DIR"], "model.bin").write_bytes(rows[::-1])
    Path(os.environ["SM_OUTPUT_DATA_DIR"], "metrics.json").write_text('{"r2": 0.9}')
    print("trained", flush=True)
    report.materialization({"rows": len(rows)})

run_job("training", main)
"""
SLEEPING_SCRIPT = "import time\nprint('up', flush=True)\ntime.sleep(300)\n"


def _tarball(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in files.items():
            data = textwrap.dedent(text).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _processing_request(store: S3ObjectStore, name: str, script: str) -> dict[str, Any]:
    """As preprocessed_load builds it: code folder, a ManifestFile of landing files, staging."""
    store.write_bytes(store.uri("code", name, "job.py"), textwrap.dedent(script).encode())
    landing = paths.landing_prefix(store, "acme")
    for file in ("a.csv", "b.csv"):
        store.write_bytes(f"{landing}{file}", b"timestamp,kwh\n")
    manifest = store.uri("manifests", "acme", "v1", paths.RAW_SAGEMAKER_MANIFEST)
    store.write_bytes(manifest, json.dumps([{"prefix": landing}, "a.csv", "b.csv"]).encode())
    return processing_job_request(
        name=name,
        settings=SETTINGS,
        role_arn=ROLE_ARN,
        entrypoint=["python3", "/opt/ml/processing/input/code/job.py"],
        arguments=["/opt/ml/processing/input/raw", "/opt/ml/processing/output/out"],
        inputs=[
            JobInput("code", store.uri("code", name) + "/"),
            JobInput("raw", manifest, "ManifestFile"),
        ],
        outputs=[JobOutput("out", paths.job_output(store, name, "out"))],
        tags={"forecast-assets/customer": "acme"},
    )


def _training_request(store: S3ObjectStore, name: str, script: str) -> dict[str, Any]:
    """As load_forecast_model builds it: script mode, preprocessed channel, models/ output; plus
    the batch.json input a batch job reads from under jobs/<name>/input/."""
    source = store.uri("code", "training", name, "sourcedir.tar.gz")
    store.write_bytes(source, _tarball({"train.py": script}))
    table = store.uri("preprocessed", "acme", "v1", "load.parquet")
    store.write_bytes(table, b"parquet bytes")
    batch = stage_batch_file(store, name, [{"customer_id": "acme"}])
    return training_job_request(
        name=name,
        settings=SETTINGS,
        role_arn=ROLE_ARN,
        program="train.py",
        source_uri=source,
        hyperparameters={"n_estimators": 10},
        channels=[JobInput("train", table), JobInput("batch", batch)],
        output_uri=paths.models_prefix(store, "acme"),
        tags={"forecast-assets/customer": "acme"},
    )


def _in_asset(body: Callable[[Any], tuple[Any, Any]]) -> dg.ExecuteInProcessResult:
    """Materialize an asset that runs ``body(context)``, a PipesSageMakerClient.run call."""

    @dg.asset
    def probe(context) -> dg.MaterializeResult:  # unannotated: annotations are strings here
        invocation, _ = body(context)
        return invocation.get_materialize_result()

    return dg.materialize([probe], raise_on_error=False, instance=dg.DagsterInstance.ephemeral())


def _failure(result: dg.ExecuteInProcessResult) -> str:
    return "\n".join(
        e.step_failure_data.error.message
        for e in result.all_events
        if e.is_step_failure and e.step_failure_data.error
    )


@pytest.fixture
def store(s3_store: S3ObjectStore) -> S3ObjectStore:
    """The product's store, under a key prefix as in production, in the fixture's bucket."""
    return S3ObjectStore(bucket=s3_store.bucket, prefix=PREFIX)


@pytest.fixture
def fake(s3_store: S3ObjectStore, tmp_path: Path) -> Iterator[FakeSageMakerClient]:
    # SageMaker stages and uploads with the execution role: through a store of its own, so that
    # its calls are never counted as Dagster's.
    sagemaker_side = S3ObjectStore(bucket=s3_store.bucket, prefix=PREFIX)
    with FakeSageMakerClient(store=sagemaker_side, jobs_root=tmp_path / "jobs") as client:
        yield client


def run_workload(
    store: S3ObjectStore,
    fake: FakeSageMakerClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Recorder:
    recorder = Recorder()
    recorder.attach(store.client, "dagster")
    recorder.attach(cast(S3ObjectStore, fake.store).client, "execution")
    recorder.attach(fake._logs, "execution")  # the job's log, as SageMaker's agent writes it
    launcher = SageMakerJobLauncher(
        store=store,
        region_name=TEST_REGION,
        first_poll_seconds=0.2,
        max_poll_seconds=0.5,
        message_interval_seconds=0.5,
    )

    def pipes_client(sleep: Callable[[float], None] | None = None) -> PipesSageMakerClient:
        # The launcher's own client (bucket, Pipes prefix, boto3 clients and their config), with
        # the fake in place of SageMaker.
        client = launcher.pipes_client()
        recorder.attach(client.s3, "dagster")
        recorder.attach(client.logs, "dagster")
        client.client = fake
        if sleep is not None:
            client.wait.sleep = sleep
        return client

    # A processing job and a training job, each run through Pipes to completion. The processing
    # step runs its request twice, as a restarted step does: the second create is refused
    # (ResourceInUse) and the job described and reused.
    request = _processing_request(store, "fa-prep-acme-iam1-0", PROCESSING_SCRIPT)

    def twice(context: Any) -> Any:
        pipes_client().run(context=context, processing_job=request)
        return pipes_client().run(context=context, processing_job=request)

    result = _in_asset(twice)
    assert result.success, _failure(result)
    assert len(fake.created_jobs()) == 1
    # Reported through Pipes: the messages were read.
    assert result.asset_materializations_for_node("probe")[0].metadata["files"].value == 2
    training = _training_request(store, "fa-train-acme-iam1-0", TRAINING_SCRIPT)
    result = _in_asset(lambda context: pipes_client().run(context=context, training_job=training))
    assert result.success, _failure(result)
    assert result.asset_materializations_for_node("probe")[0].metadata["rows"].value == 13
    # What the assets then do with the outputs: read them, publish them (the first time and
    # again), and remove versions no pointer names any more.
    store.read_bytes(model_artifact_uri(training))
    store.download_file(output_data_uri(training), tmp_path / "output.tar.gz")
    staging = paths.job_output(store, "fa-prep-acme-iam1-0", "out")
    for dataset in ("manifests", "preprocessed", "forecasts"):
        for version in ("v2", "v3", "v4", "v5"):
            sources = {"files.txt": f"{staging}/files.txt"}
            publication.publish(store, dataset, "acme", version, sources=sources)
        with monkeypatch.context() as patch:
            patch.setattr(publication, "PRUNE_GRACE", timedelta(seconds=-60))
            current = publication.current(store, dataset, "acme")
            assert current is not None
            assert "v2" in publication.prune(store, current)

    # Interrupted runs stop their jobs. Their scripts never close a Pipes session, and Dagster
    # waits 10 s for one after each: not here.
    monkeypatch.setattr(pipes_utils, "WAIT_FOR_LOGS_AFTER_EXECUTION_INTERVAL", 0)
    for kind, name in (("processing", "fa-prep-acme-iam2-0"), ("training", "fa-train-acme-iam2-0")):

        def interrupt(_: float, name: str = name) -> None:
            fake.wait_until_running(name, timeout=60)
            raise dg.DagsterExecutionInterruptedError()

        if kind == "processing":
            body = {"processing_job": _processing_request(store, name, SLEEPING_SCRIPT)}
        else:
            body = {"training_job": _training_request(store, name, SLEEPING_SCRIPT)}
        client = pipes_client(sleep=interrupt)

        def run(context: Any, c: PipesSageMakerClient = client, b: dict = body) -> Any:
            return c.run(context=context, **b)

        result = _in_asset(run)
        assert not result.success
        assert fake.wait_until_done(name, timeout=60)[f"{kind.capitalize()}JobStatus"] == "Stopped"

    # The object store's other operations, on both sides of every size limit.
    launcher.publish_code("training")  # exists() of a missing key, then a write
    landing = paths.landing_prefix(store, "acme")
    assert [o.key.rsplit("/", 1)[1] for o in store.list_objects(landing)] == ["a.csv", "b.csv"]
    assert store.exists(f"{landing}a.csv") and not store.exists(f"{landing}nothing.csv")
    store.head(f"{landing}a.csv")
    big_file = tmp_path / "big.bin"
    big_file.write_bytes(b"x" * BIG)
    big = store.uri("landing", "acme", "big.bin")
    store.upload_file(big_file, big)  # multipart upload
    store.download_file(big, tmp_path / "big-copy.bin")  # ranged gets
    store.download_prefix(store.uri("manifests", "acme") + "/", tmp_path / "manifests")
    # A copy past CopyObject's limit is a managed multipart copy: make the limit small instead
    # of the object 5 GiB.
    with monkeypatch.context() as patch:
        patch.setattr(storage_module, "_COPY_OBJECT_LIMIT", 1024)
        store.copy_object(big, store.uri("preprocessed", "acme", "big.bin"))

    # A multipart upload that fails part-way is aborted (s3transfer cleans up after itself).
    def fail_part(**_: Any) -> None:
        raise ConnectionError("network gone")

    store.client.meta.events.register("before-call.s3.UploadPart", fail_part)
    try:
        with pytest.raises(ConnectionError):
            store.upload_file(big_file, store.uri("landing", "acme", "broken.bin"))
    finally:
        store.client.meta.events.unregister("before-call.s3.UploadPart", fail_part)

    recorder.add_sagemaker(fake)
    return recorder


def _pipes_message_prefixes(recorder: Recorder) -> set[str]:
    """Where each launched job was told to write its Pipes messages (a key prefix)."""
    prefixes = set()
    for call in recorder.calls:
        if call.service == "sagemaker" and call.operation.startswith("Create"):
            params = decode_param(call.params["Environment"]["DAGSTER_PIPES_MESSAGES"])
            prefixes.add(params["key_prefix"].strip("/") + "/")
    return prefixes


# (b) and (c): every recorded call is allowed, and the policy grants nothing unused ---------------


def _refusals(policy: dict[str, Any], calls: Iterable[Call]) -> list[str]:
    return [
        f"{request.action} on {request.resource} ({request.origin})"
        for call in calls
        for request in iam_requests(call)
        if not allowing_statements(policy, request)
    ]


def test_policies_allow_every_recorded_call_and_nothing_unused(store, fake, tmp_path, monkeypatch):
    recorder = run_workload(store, fake, tmp_path, monkeypatch)
    dagster_policy = load_policy(DAGSTER_POLICY, bucket=store.bucket)
    execution_policy = load_policy(EXECUTION_POLICY, bucket=store.bucket)
    print(
        "recorded:\n  "
        + "\n  ".join(sorted({f"{c.principal}: {c.service} {c.operation}" for c in recorder.calls}))
    )

    dagster_calls = [c for c in recorder.calls if c.principal == "dagster"]
    # Every job was told to write its Pipes messages under our prefix.
    prefixes = _pipes_message_prefixes(recorder)
    assert prefixes and all(p.startswith(f"{PREFIX}/pipes/") for p in prefixes), prefixes
    # The job's own Pipes calls run in its process, unrecorded: the execution role may read its
    # context and write its message chunks, also each host's of a multi-instance job.
    bucket = f"arn:aws:s3:::{store.bucket}"
    for call in recorder.calls:
        if call.service == "sagemaker" and call.operation.startswith("Create"):
            context = decode_param(call.params["Environment"]["DAGSTER_PIPES_CONTEXT"])
            messages = decode_param(call.params["Environment"]["DAGSTER_PIPES_MESSAGES"])
            job_side = [
                Request("s3:GetObject", f"{bucket}/{context['key']}"),
                Request("s3:PutObject", f"{bucket}/{messages['key_prefix']}/1.json"),
                Request("s3:PutObject", f"{bucket}/{messages['key_prefix']}/algo-2/1.json"),
            ]
            for request in job_side:
                assert allowing_statements(execution_policy, request), request
            # Where iam/README.md says they are (the lifecycle rules and deletes rely on it).
            key = re.escape(PREFIX) + r"/pipes/[0-9a-f]{16}/"
            assert re.fullmatch(key + r"context\.json", context["key"]), context
            assert re.fullmatch(key + "messages", messages["key_prefix"]), messages
    readme = (IAM_DIR / "README.md").read_text()
    assert "`${PREFIX}/pipes/<key>/context.json`" in readme
    assert "`pipes/<key>/messages/<n>.json`" in readme

    # (b) The Dagster policy allows every call the Dagster side makes.
    refused = _refusals(dagster_policy, dagster_calls)
    assert not refused, "the Dagster policy refuses calls the code makes:\n" + "\n".join(refused)

    # (c) Nothing unused: every action and every resource of the Dagster policy serves a call.
    requests = [r for c in dagster_calls for r in iam_requests(c)]
    policy_actions = {a for s in dagster_policy["Statement"] for a in _as_list(s["Action"])}
    unused_actions = (
        policy_actions - {r.action for r in requests} - set(UNUSED_DAGSTER_ACTIONS_ALLOWED)
    )
    assert not unused_actions, f"the Dagster policy grants actions no call uses: {unused_actions}"
    used: set[tuple[str, str]] = set()  # (Sid, resource as written) that allowed some request
    statements = {s["Sid"]: s for s in dagster_policy["Statement"]}
    for request in requests:
        for sid in allowing_statements(dagster_policy, request):
            for resource in _as_list(statements[sid]["Resource"]):
                if _wildcard(resource, request.resource):
                    used.add((sid, resource))
    allowed_unused = {
        r.format(region=TEST_REGION, account=ACCOUNT_ID) for r in UNUSED_DAGSTER_RESOURCES_ALLOWED
    }
    unused_resources = [
        f"{sid}: {resource}"
        for sid, statement in statements.items()
        for resource in _as_list(statement["Resource"])
        if (sid, resource) not in used and resource not in allowed_unused
    ]
    assert not unused_resources, "resources no call uses:\n" + "\n".join(unused_resources)
    assert all(r != "*" for s in statements.values() for r in _as_list(s["Resource"]))

    # The execution role: what SageMaker (the fake) does for the jobs. The fake stages and
    # uploads through an S3ObjectStore, which heads each object after uploading it; SageMaker
    # does not, so those heads are not the execution role's to allow.
    execution_calls = []
    uploaded: set[tuple[Any, Any]] = set()
    for call in (c for c in recorder.calls if c.principal == "execution"):
        target = (call.params.get("Bucket"), call.params.get("Key"))
        if call.operation in ("PutObject", "CompleteMultipartUpload"):
            uploaded.add(target)
        if not (call.operation == "HeadObject" and target in uploaded):
            execution_calls.append(call)
    refused = _refusals(execution_policy, execution_calls)
    assert not refused, "the execution policy refuses what SageMaker does:\n" + "\n".join(refused)
    operations = {c.operation for c in execution_calls}
    assert {
        "ListObjectsV2",
        "GetObject",
        "PutObject",
        "CreateLogStream",
        "PutLogEvents",
    } <= operations
