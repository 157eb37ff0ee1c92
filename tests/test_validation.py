"""Every request is valid before it is sent: the final CreateProcessingJob / CreateTrainingJob
bodies, Pipes environment and tags merged in, against every constraint of SageMaker's service
model and the rules it documents elsewhere, each problem naming the setting to change.

The worst case a deployment can configure (a 63-character bucket, a long prefix, the longest
customer id, batches of 10, 3 instances, every platform setting at its limit) must pass; a
setting that cannot fit must fail before any job, naming the setting and by how much.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import dagster as dg
import pytest
from dagster_aws.pipes import PipesS3ContextInjector
from dagster_pipes import decode_param, encode_param

from forecast_assets import paths
from forecast_assets.assets.common import job_tags
from forecast_assets.assets.model import TrainingConfig
from forecast_assets.customers import MAX_CUSTOMER_ID_LENGTH, validate_customer_id
from forecast_assets.publication import new_version
from resources.jobs import validation
from resources.jobs.base import JobLauncher
from resources.jobs.requests import (
    PROCESSING_INPUT_ROOT,
    JobInput,
    JobOutput,
    job_name,
    processing_job_request,
    processing_local_path,
    training_job_request,
)
from resources.jobs.settings import (
    JOB_OWN_TAG_KEYS,
    MAX_DEPLOYMENT_TAGS,
    MAX_TAGS,
    JobName,
    JobSettings,
    PlatformSettings,
)
from resources.jobs.validation import (
    InvalidJobRequestError,
    Operation,
    has_instance_storage,
    request_problems,
    validate_request,
)
from resources.storage import LocalObjectStore

# The worst case a deployment can configure ----------------------------------------------------

# S3 bucket names are 3-63 characters.
BUCKET = "energy-forecasting-prod-eu-central-1-123456789012-load-archive7"
PREFIX = "tenants/utility-nordost/forecast-assets"
RUN_ID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
ROLE = "arn:aws:iam::123456789012:role/service-role/forecast-assets-sagemaker-execution-prod"
IMAGE = "123456789012.dkr.ecr.eu-central-1.amazonaws.com/energy/forecast-assets/{job}:2026.11.23-1"
KMS_ARN = "arn:aws:kms:eu-central-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
BATCH = 10


def _longest_id(n: int = 0) -> str:
    value = f"z{n:02d}" + "3456789-abcdefghij-klmnopqrstu"[: MAX_CUSTOMER_ID_LENGTH - 3]
    assert len(value) == MAX_CUSTOMER_ID_LENGTH == 32
    return validate_customer_id(value)


CUSTOMERS = [_longest_id(n) for n in range(BATCH)]


def _worst_platform() -> PlatformSettings:
    """Every platform setting at its limit: 16 subnets, 5 security groups, a key ARN, and as
    many tags as FORECAST_TAGS may bring, with the longest keys and values."""
    tags = ",".join(
        f"{f'cost-allocation/{i:02d}/':-<{128}}={f'value {i} ':x<{256}}"
        for i in range(MAX_DEPLOYMENT_TAGS)
    )
    return PlatformSettings(
        kms_key_id=KMS_ARN,
        subnets=",".join(f"subnet-{i:017x}" for i in range(16)),
        security_group_ids=",".join(f"sg-{i:017x}" for i in range(5)),
        tags=tags,
    )


def _settings(job: JobName, customers: int, instances: int = 3) -> JobSettings:
    """The worst settings."""
    settings = JobSettings(
        image_uri=IMAGE.format(job=job),
        instance_type="ml.m5.24xlarge",
        instance_count=instances,
        volume_size_gb=16_384 if job != "training" else 30,
        max_runtime_seconds=86_400,
        spot_max_wait_seconds=172_800 if job == "training" else 0,
    )
    return settings.for_batch(customers, job)


def _asset_context(asset: str) -> Any:
    return SimpleNamespace(run_id=RUN_ID, asset_key=dg.AssetKey(asset.split("/")))


def _job_request(
    job: JobName,
    customers: list[str],
    store: LocalObjectStore,
    attempt: int = 12345,
    instances: int = 3,
) -> tuple[Operation, dict[str, Any]]:
    """The body the asset for ``job`` builds for ``customers`` (see forecast_assets/assets/)."""
    label = customers[0] if len(customers) == 1 else f"batch{len(customers)}"
    name = job_name(job, label, RUN_ID, attempt)
    version = new_version(name)
    settings = _settings(job, len(customers), instances)
    asset = {
        "preprocessing": "preprocessed/load",
        "training": "models/load_forecast_model",
        "inference": "forecasts/load_forecast",
    }[job]
    tags = job_tags(_asset_context(asset), customers)
    code = store.uri("code", job, "0123456789abcdef") + "/"
    if job == "training":
        hyperparameters = TrainingConfig().hyperparameters()
        if len(customers) == 1:
            hyperparameters["customer_id"] = customers[0]
            channels = [
                JobInput("train", store.uri("preprocessed", customers[0], version, "load.parquet"))
            ]
            output_uri = paths.models_prefix(store, customers[0])
            checkpoint_uri = paths.checkpoints(store, customers[0])
        else:
            channels = [
                JobInput("train", paths.job_input(store, name, "train") + "/"),
                JobInput("batch", paths.job_input(store, name, "batch") + "/"),
            ]
            output_uri = store.uri("jobs")
            checkpoint_uri = store.uri("checkpoints", "batches", name)
        return "CreateTrainingJob", training_job_request(
            name=name,
            settings=settings,
            role_arn=ROLE,
            program="train.py",
            source_uri=code + "sourcedir.tar.gz",
            hyperparameters=hyperparameters,
            channels=channels,
            output_uri=output_uri,
            tags=tags,
            platform=_worst_platform(),
            checkpoint_uri=checkpoint_uri,
        )
    output = "preprocessed" if job == "preprocessing" else "forecast"
    if len(customers) == 1:
        (customer,) = customers
        arguments = ["--customer-id", customer]
        if job == "preprocessing":
            manifests = store.uri("manifests", customer, version)
            inputs = [
                JobInput("raw", f"{manifests}/raw_load.manifest", "ManifestFile"),
                JobInput("manifest", f"{manifests}/raw_load.json"),
            ]
        else:
            model = paths.model_artifact(store, customer, job_name("training", customer, RUN_ID))
            arguments += ["--source", "previous_approved", "--model-version", version]
            inputs = [
                JobInput("model", model),
                JobInput("history", store.uri("preprocessed", customer, version, "load.parquet")),
            ]
    else:
        arguments = ["--batch", f"{processing_local_path('input', 'batch')}/batch.json"]
        batch_inputs = (
            ["batch", "raw", "manifest"]
            if job == "preprocessing"
            else ["batch", "model", "history"]
        )
        inputs = [
            JobInput(n, paths.job_input(store, name, n) + "/raw.manifest", "ManifestFile")
            if n == "raw"
            else JobInput(n, paths.job_input(store, name, n) + "/")
            for n in batch_inputs
        ]
    return "CreateProcessingJob", processing_job_request(
        name=name,
        settings=settings,
        role_arn=ROLE,
        entrypoint=["python3", f"{PROCESSING_INPUT_ROOT}/code/bootstrap.py", f"{job}.py"],
        arguments=[
            *arguments,
            "--output-dir",
            processing_local_path("output", output),
            "--issued-at",
            "2026-11-23T06:00:00.123456+00:00",
        ],
        inputs=[JobInput("code", code), *inputs],
        outputs=[JobOutput(output, paths.job_output(store, name, output))],
        tags=tags,
        platform=_worst_platform(),
    )


# Pipes, as the client merges it ---------------------------------------------------------------


class _NoS3:
    """An S3 client for PipesS3ContextInjector that stores nothing."""

    def put_object(self, **_: Any) -> None: ...

    def delete_object(self, **_: Any) -> None: ...


# Where a job's Pipes context and messages go under ``<prefix>/pipes/``:
# - "short": what PipesSageMakerClient does now, one key of 16 random hex digits per session,
#   ``<key>/context.json`` and ``<key>/messages``;
# - "injector": dagster-aws's PipesS3ContextInjector under such a key (it adds 30 random
#   letters): longer than "short", a margin for how the client may come to write its context;
# - "job name": what the client did before, a folder named after the job.


def _hex(digits: int) -> str:
    """Random hex digits (from ``random``, so that a seed repeats them)."""
    return f"{random.getrandbits(4 * digits):0{digits}x}"


def _pipes_params(bucket: str, prefix: str, name: str, layout: str) -> tuple[dict, dict]:
    """The context and messages parameters of one Pipes session."""
    pipes = f"{prefix.strip('/')}/pipes" if prefix.strip("/") else "pipes"
    if layout == "short":
        key = f"{pipes}/{_hex(16)}"
        context = {"bucket": bucket, "key": f"{key}/context.json"}
        return context, {"bucket": bucket, "key_prefix": f"{key}/messages"}
    key = f"{pipes}/{name}" if layout == "job name" else f"{pipes}/{_hex(16)}"
    injector = PipesS3ContextInjector(bucket=bucket, client=_NoS3(), key_prefix=f"{key}/")  # type: ignore[arg-type]
    with injector.inject_context({}) as params:  # type: ignore[arg-type]
        context = dict(params)
    messages = f"{key}/messages-{_hex(12)}" if layout == "job name" else f"{key}/messages"
    return context, {"bucket": bucket, "key_prefix": messages}


def _final(
    operation: Operation,
    body: dict[str, Any],
    bucket: str = BUCKET,
    prefix: str = PREFIX,
    layout: str = "short",
) -> dict[str, Any]:
    """``body`` as PipesSageMakerClient sends it: the bootstrap environment of a Pipes session
    (each parameter encoded as dagster-pipes does) and Dagster's run tags merged in."""
    name = body["ProcessingJobName" if operation == "CreateProcessingJob" else "TrainingJobName"]
    context, messages = _pipes_params(bucket, prefix, name, layout)
    final = {
        **body,
        "Environment": {
            **body["Environment"],
            "DAGSTER_PIPES_CONTEXT": encode_param(context),
            "DAGSTER_PIPES_MESSAGES": encode_param(messages),
        },
    }
    # Dagster's run execution info (every key, as on Dagster+), then the asset's tags.
    tags = {t["Key"]: t["Value"] for t in body["Tags"]}
    for tag, value in {
        "dagster/run-id": RUN_ID,
        "dagster/job": "__ASSET_JOB_0",
        "dagster/partition": CUSTOMERS[0],
        "dagster/code-location": "forecast_assets",
        "dagster/user": "first.last@utility-nordost.example",
        "dagster/deployment-name": "prod",
        "dagster/git-repo": "https://github.example/energy/forecast-assets",
        "dagster/git-branch": "release/2026-11",
        "dagster/git-sha": "0123456789abcdef0123456789abcdef01234567",
        "dagster/asset": "preprocessed/load",
    }.items():
        tags.setdefault(tag, value)
    final["Tags"] = [{"Key": k, "Value": v} for k, v in sorted(tags.items())]
    return final


@pytest.fixture
def seeded() -> Iterator[None]:
    """The Pipes keys hold random characters: the same draws every run."""
    state = random.getstate()
    random.seed(20261123)
    yield
    random.setstate(state)


def _store(bucket: str = BUCKET, prefix: str = PREFIX) -> LocalObjectStore:
    return LocalObjectStore(bucket=bucket, prefix=prefix)


JOBS: tuple[JobName, ...] = ("preprocessing", "training", "inference")


# The worst case passes ---------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["short", "injector"])
@pytest.mark.parametrize(
    ("customers", "instances"),
    [(1, 3), (BATCH, 1), (BATCH, 3)],
    ids=["one customer", "batch of 10", "3-instance batch of 10"],
)
@pytest.mark.parametrize("job", JOBS)
def test_worst_case_requests_are_valid(
    job: JobName, customers: int, instances: int, layout: str, seeded: None
):
    operation, body = _job_request(job, CUSTOMERS[:customers], _store(), instances=instances)
    cluster = body.get("ProcessingResources", {}).get("ClusterConfig") or body["ResourceConfig"]
    # Never more instances than customers.
    assert cluster["InstanceCount"] == min(instances, customers)
    tag_keys = {t["Key"] for t in body["Tags"]}
    assert len(tag_keys) == MAX_DEPLOYMENT_TAGS + 5  # every FORECAST_TAGS tag, and the step's
    # Many draws of the keys' random characters, as many launches would make.
    for _ in range(100):
        final = _final(operation, body, layout=layout)
        assert len(final["Tags"]) == MAX_TAGS
        assert request_problems(operation, final) == []
    validate_request(operation, final)


def test_worst_case_figures(seeded: None):
    """The lengths that come closest to a limit in the worst case, and their limits."""
    operation, body = _job_request("inference", CUSTOMERS[:1], _store())
    for layout, most in (("short", 200), ("injector", 240)):
        env = [_final(operation, body, layout=layout)["Environment"] for _ in range(200)]
        pipes = [e[v] for e in env for v in ("DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES")]
        assert max(map(len, pipes)) <= most, (layout, max(map(len, pipes)))
    assert max(len(i["S3Input"]["S3Uri"]) for i in body["ProcessingInputs"]) < 1024
    assert len(body["ProcessingJobName"]) <= 63


def test_today_job_name_layout_overflows_with_the_worst_settings(seeded: None):
    """The issue's finding: a 63-character bucket and a 39-character prefix put the job's name in
    every Pipes key, and DAGSTER_PIPES_CONTEXT outgrows the 256 characters processing takes."""
    operation, body = _job_request("preprocessing", CUSTOMERS[:1], _store())
    lengths, failures = [], []
    for _ in range(50):
        final = _final(operation, body, layout="job name")
        lengths.append(len(final["Environment"]["DAGSTER_PIPES_CONTEXT"]))
        failures += request_problems(operation, final)
    assert max(lengths) > 256, lengths
    assert failures
    for failure in failures:
        assert re.match(
            r"FORECAST_BUCKET \+ FORECAST_PREFIX make the Pipes parameter DAGSTER_PIPES_CONTEXT "
            r".* (\d+) characters, the limit is 256: FORECAST_PREFIX is too long by \d+ characters",
            failure,
        ), failure
    # Training takes 512 characters per environment value.
    operation, body = _job_request("training", CUSTOMERS[:1], _store())
    assert request_problems(operation, _final(operation, body, layout="job name")) == []


@pytest.mark.parametrize("job", ["preprocessing", "inference"])
def test_a_prefix_too_long_for_pipes_fails_naming_it_and_by_how_much(job: JobName):
    prefix = (
        "tenants/utility-nordost/brandenburg-2026/forecasting-prod-eu-central-1/v3/load-curves"
        "/hourly/archive-2026-q4/replay-for-audit-7/team-grid-analytics/sandbox-jana-schulz-2026"
    )
    assert len(prefix) == 172
    operation, body = _job_request(job, CUSTOMERS[:1], _store(prefix=prefix))
    random.seed(7)
    final = _final(operation, body, prefix=prefix)
    with pytest.raises(InvalidJobRequestError) as caught:
        validate_request(operation, final)
    problems = caught.value.problems
    assert problems
    for problem in problems:
        match = re.fullmatch(
            r"FORECAST_BUCKET \+ FORECAST_PREFIX make the Pipes parameter (DAGSTER_PIPES_\w+) "
            r"\(bucket and key, compressed\) \d+ characters, the limit is 256: "
            r"FORECAST_PREFIX is too long by (\d+) characters \[Environment\[\1\]\]",
            problem,
        )
        assert match, problem
        # The figure is exact: that much shorter fits, one character less does not.
        var, cut = match[1], int(match[2])
        for shorter, fits in (
            (prefix[: len(prefix) - cut], True),
            (prefix[: len(prefix) - cut + 1], False),
        ):
            random.seed(7)
            _, shorter_body = _job_request(job, CUSTOMERS[:1], _store(prefix=shorter))
            env = _final(operation, shorter_body, prefix=shorter)["Environment"]
            assert (len(env[var]) <= 256) is fits, (var, cut, shorter)


def test_an_s3_uri_too_long_fails_naming_the_prefix():
    prefix = "archive/" + "x" * 1000
    operation, body = _job_request("preprocessing", CUSTOMERS[:1], _store(prefix=prefix))
    problems = request_problems(operation, body)
    uris = [u for u in _s3_uris(body) if len(u) > 1024]
    assert uris
    for uri in uris:
        over = len(uri) - 1024
        expected = (
            f"FORECAST_BUCKET + FORECAST_PREFIX make {uri[:40]}…{uri[-30:]} {len(uri)} characters, the limit "
            f"is 1024: FORECAST_PREFIX is too long by {over} characters"
        )
        assert any(p.startswith(expected) for p in problems), (expected, problems)


def _s3_uris(body: dict[str, Any]) -> list[str]:
    return [i["S3Input"]["S3Uri"] for i in body["ProcessingInputs"]] + [
        o["S3Output"]["S3Uri"] for o in body["ProcessingOutputConfig"]["Outputs"]
    ]


# One error listing every problem -------------------------------------------------------------


def test_every_problem_is_listed_in_one_failure():
    operation, body = _job_request("preprocessing", CUSTOMERS[:1], _store())
    body["ProcessingResources"]["ClusterConfig"]["InstanceType"] = "ml.m5.xlarg"
    body["ProcessingResources"]["ClusterConfig"]["VolumeSizeInGB"] = 20_000
    body["RoleArn"] = "forecast-role"
    with pytest.raises(InvalidJobRequestError) as caught:
        validate_request(operation, body)
    error = caught.value
    assert isinstance(error, dg.Failure) and not error.allow_retries
    assert error.description is not None
    first, *rest = error.description.splitlines()
    assert first == (
        f"SageMaker would refuse CreateProcessingJob for {body['ProcessingJobName']}, so it was "
        "not sent (4 problems):"
    )
    assert rest == [f"- {p}" for p in error.problems]
    assert error.problems == [
        "FORECAST_SAGEMAKER_ROLE_ARN: RoleArn is 13 characters long, the minimum is 20",
        "FORECAST_SAGEMAKER_ROLE_ARN: RoleArn is 'forecast-role', which does not match "
        r"arn:aws[a-z\-]*:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+",
        "FORECAST_PREPROCESSING_INSTANCE_TYPE is 'ml.m5.xlarg', which SageMaker does not offer "
        "for processing jobs (did you mean 'ml.m5.xlarge'?) "
        "[ProcessingResources.ClusterConfig.InstanceType]",
        "FORECAST_PREPROCESSING_VOLUME_SIZE_GB: ProcessingResources.ClusterConfig.VolumeSizeInGB "
        "is 20000, the maximum is 16384",
    ]


def test_the_setting_behind_each_field_is_named():
    cases: list[tuple[JobName, tuple[Any, ...], Any, str]] = [
        ("inference", ("ProcessingResources", "ClusterConfig", "InstanceCount"), 101, "FORECAST_INFERENCE_INSTANCE_COUNT"),
        ("preprocessing", ("StoppingCondition", "MaxRuntimeInSeconds"), 777_601, "FORECAST_PREPROCESSING_MAX_RUNTIME_SECONDS"),
        ("training", ("StoppingCondition", "MaxRuntimeInSeconds"), 2_419_201, "FORECAST_TRAINING_MAX_RUNTIME_SECONDS"),
        ("training", ("AlgorithmSpecification", "TrainingImage"), "i" * 256, "FORECAST_TRAINING_IMAGE_URI"),
        ("inference", ("AppSpecification", "ImageUri"), "i" * 256, "FORECAST_INFERENCE_IMAGE_URI"),
        ("training", ("RoleArn",), "arn:aws:iam::123:role/x", "FORECAST_SAGEMAKER_ROLE_ARN"),
        ("training", ("ResourceConfig", "InstanceType"), "ml.m5.huge", "FORECAST_TRAINING_INSTANCE_TYPE"),
        # Training-only instance types are not offered for processing.
        ("preprocessing", ("ProcessingResources", "ClusterConfig", "InstanceType"), "ml.p4d.24xlarge", "FORECAST_PREPROCESSING_INSTANCE_TYPE"),
        ("training", ("VpcConfig", "SecurityGroupIds"), [], "FORECAST_SECURITY_GROUP_IDS"),
        ("inference", ("NetworkConfig", "VpcConfig", "Subnets"), ["subnet_1"], "FORECAST_SUBNETS"),
        ("training", ("OutputDataConfig", "KmsKeyId"), "key with spaces", "FORECAST_KMS_KEY_ID"),
        ("training", ("TrainingJobName",), "fa-train-" + "x" * 60, "the job name"),
        ("preprocessing", ("AppSpecification", "ContainerArguments", 0), "a" * 257, "a bug in forecast_assets"),
        ("training", ("HyperParameters", "n_estimators"), "9" * 2501, "the hyperparameters (models/load_forecast_model's config)"),
    ]  # fmt: skip
    for job, path, value, setting in cases:
        operation, body = _job_request(job, CUSTOMERS[:1], _store())
        _set(body, path, value)
        problems = request_problems(operation, body)
        assert problems, (path, value)
        assert problems[0].startswith(setting), (setting, problems)
        assert all(setting in p for p in problems), (setting, problems)


def _set(body: Any, path: tuple[Any, ...], value: Any) -> None:
    for part in path[:-1]:
        body = body[part]
    body[path[-1]] = value


def test_botocore_type_and_required_errors_name_the_setting():
    operation, body = _job_request("training", CUSTOMERS[:1], _store())
    body["ResourceConfig"]["InstanceCount"] = "3"
    del body["RoleArn"]
    assert request_problems(operation, body) == [
        'FORECAST_SAGEMAKER_ROLE_ARN: botocore: Missing required parameter in input: "RoleArn"',
        "FORECAST_TRAINING_INSTANCE_COUNT: botocore: Invalid type for parameter "
        "ResourceConfig.InstanceCount, value: 3, type: <class 'str'>, valid types: <class 'int'>",
    ]


# The service model, all of it ------------------------------------------------------------------


@pytest.mark.parametrize("operation", validation.OPERATIONS)
def test_every_pattern_of_the_model_is_checked(operation: Operation):
    assert validation.uncheckable_patterns(operation) == []


def test_the_limits_the_issue_names_are_the_models():
    processing = validation.input_shape("CreateProcessingJob").members
    training = validation.input_shape("CreateTrainingJob").members
    env_p, env_t, hps = (
        processing["Environment"],
        training["Environment"],
        training["HyperParameters"],
    )
    assert env_p.metadata["max"] == env_t.metadata["max"] == hps.metadata["max"] == 100
    assert (env_p.key.metadata["max"], env_p.value.metadata["max"]) == (256, 256)
    assert (env_t.key.metadata["max"], env_t.value.metadata["max"]) == (512, 512)
    assert (hps.key.metadata["max"], hps.value.metadata["max"]) == (256, 2500)
    assert processing["Tags"].metadata["max"] == training["Tags"].metadata["max"] == MAX_TAGS


def test_tag_patterns_follow_unicode_categories():
    operation, body = _job_request("training", CUSTOMERS[:1], _store())
    body["Tags"] = [
        {"Key": "Kostenstelle Süd", "Value": "Ökostrom ٣ 電力 _.:/=+-@"},
        {"Key": "bad#key", "Value": "ok"},
        {"Key": "ok", "Value": "tab\there"},
    ]
    problems = request_problems(operation, body)
    assert len(problems) == 2
    assert "the key of the tag 'bad#key'" in problems[0]
    assert "the value of the tag 'ok'" in problems[1]
    assert all(p.startswith("FORECAST_TAGS") for p in problems)


@pytest.mark.parametrize(
    ("operation", "limit"), [("CreateProcessingJob", 256), ("CreateTrainingJob", 512)]
)
def test_environment_limits(operation: Operation, limit: int):
    job: JobName = "training" if operation == "CreateTrainingJob" else "inference"
    _, body = _job_request(job, CUSTOMERS[:1], _store())
    body["Environment"] = {"LONGEST": "v" * limit}
    assert request_problems(operation, body) == []
    body["Environment"] = {"LONGEST": "v" * (limit + 1)}
    assert request_problems(operation, body) == [
        "a bug in forecast_assets (no setting causes this): Environment[LONGEST] is "
        f"{limit + 1} characters long, the limit is {limit}"
    ]
    body["Environment"] = {f"V{i}": "1" for i in range(101)}
    assert request_problems(operation, body) == [
        "a bug in forecast_assets (no setting causes this): Environment is 101 entries, the "
        "limit is 100"
    ]
    body["Environment"] = {"1NOT_A_NAME": "x"}
    (problem,) = request_problems(operation, body)
    assert "Environment[1NOT_A_NAME] (its key) is '1NOT_A_NAME', which does not match" in problem


def test_hyperparameter_limits():
    operation, body = _job_request("training", CUSTOMERS[:1], _store())
    body["HyperParameters"] = {f"h{i}": "1" for i in range(100)}
    assert request_problems(operation, body) == []
    body["HyperParameters"] = {f"h{i}": "1" for i in range(101)}
    assert request_problems(operation, body) == [
        "the hyperparameters (models/load_forecast_model's config): HyperParameters is 101 "
        "entries, the limit is 100"
    ]
    body["HyperParameters"] = {"k" * 257: "v" * 2501}
    assert len(request_problems(operation, body)) == 2


# Documented rules the model lacks ----------------------------------------------------------------


def test_processing_paths_must_be_under_opt_ml_processing_and_distinct():
    operation, body = _job_request("preprocessing", CUSTOMERS[:BATCH], _store())
    inputs, outputs = body["ProcessingInputs"], body["ProcessingOutputConfig"]["Outputs"]
    assert request_problems(operation, body) == []
    inputs[1]["S3Input"]["LocalPath"] = "/opt/ml/input/batch"
    outputs[0]["S3Output"]["LocalPath"] = "/tmp/out"
    inputs[2]["S3Input"]["LocalPath"] = inputs[0]["S3Input"]["LocalPath"]
    inputs[3]["InputName"] = inputs[0]["InputName"]
    problems = request_problems(operation, body)
    assert problems == [
        "the input path '/opt/ml/input/batch' is not under /opt/ml/processing/: a bug in "
        "forecast_assets (no setting causes this) [ProcessingInputs[1].S3Input.LocalPath]",
        "the input path '/opt/ml/processing/input/code' is also "
        "ProcessingInputs[0].S3Input.LocalPath: a bug in forecast_assets (no setting causes "
        "this) [ProcessingInputs[2].S3Input.LocalPath]",
        "the output path '/tmp/out' is not under /opt/ml/processing/: a bug in forecast_assets "
        "(no setting causes this) [ProcessingOutputConfig.Outputs[0].S3Output.LocalPath]",
        "the InputName 'code' appears twice: a bug in forecast_assets (no setting causes this) "
        "[ProcessingInputs[3]]",
    ]


def test_an_output_on_an_input_path_and_duplicate_output_names_are_refused():
    operation, body = _job_request("inference", CUSTOMERS[:1], _store())
    output = body["ProcessingOutputConfig"]["Outputs"][0]
    output["S3Output"]["LocalPath"] = body["ProcessingInputs"][1]["S3Input"]["LocalPath"] + "/"
    body["ProcessingOutputConfig"]["Outputs"].append(output)
    problems = request_problems(operation, body)
    assert any("the output path '/opt/ml/processing/input/model/' is also" in p for p in problems)
    assert any("the OutputName 'forecast' appears twice" in p for p in problems)


def test_training_channel_names_are_unique():
    operation, body = _job_request("training", CUSTOMERS[:BATCH], _store())
    body["InputDataConfig"][1]["ChannelName"] = "train"
    assert request_problems(operation, body) == [
        "the ChannelName 'train' appears twice: a bug in forecast_assets (no setting causes "
        "this) [InputDataConfig[1]]"
    ]


def test_spot_training_waits_at_least_as_long_as_it_runs():
    operation, body = _job_request("training", CUSTOMERS[:1], _store())
    assert body["EnableManagedSpotTraining"] is True
    body["StoppingCondition"] = {"MaxRuntimeInSeconds": 7200, "MaxWaitTimeInSeconds": 3600}
    assert request_problems(operation, body) == [
        "FORECAST_TRAINING_SPOT_MAX_WAIT_SECONDS: MaxWaitTimeInSeconds 3600 is less than "
        "MaxRuntimeInSeconds 7200 (FORECAST_TRAINING_MAX_RUNTIME_SECONDS); SageMaker needs at "
        "least as long [StoppingCondition.MaxWaitTimeInSeconds]"
    ]
    del body["StoppingCondition"]["MaxWaitTimeInSeconds"]
    (problem,) = request_problems(operation, body)
    assert problem.startswith("managed spot training without MaxWaitTimeInSeconds: a bug")


def test_too_many_tags_name_forecast_tags_and_how_many_to_remove(seeded: None):
    operation, body = _job_request("inference", CUSTOMERS[:1], _store())
    body["Tags"].append({"Key": "one-too-many", "Value": "x"})
    (problem,) = request_problems(operation, _final(operation, body))
    assert problem == (
        "FORECAST_TAGS: the job would carry 51 tags, SageMaker takes 50: FORECAST_TAGS brings 39 "
        "and every job carries 12 of its own, so remove 1 from FORECAST_TAGS [Tags]"
    )


def test_tag_keys_unique_and_not_aws():
    operation, body = _job_request("training", CUSTOMERS[:1], _store())
    body["Tags"] = [
        {"Key": "team", "Value": "a"},
        {"Key": "team", "Value": "b"},
        {"Key": "AWS:cloudformation:stack", "Value": "x"},
        {"Key": "owner", "Value": "aws:me"},
        {"Key": "dagster/run-id", "Value": "aws:x"},
    ]
    assert request_problems(operation, body) == [
        "FORECAST_TAGS: the tag key 'team' appears twice [Tags[1]]",
        "FORECAST_TAGS: the key 'AWS:cloudformation:stack' starts with 'aws:', which AWS "
        "reserves for its own tags [Tags[2]]",
        "FORECAST_TAGS: the value 'aws:me' starts with 'aws:', which AWS reserves for its own "
        "tags [Tags[3]]",
        "a bug in forecast_assets (no setting causes this), a tag it sets: the value 'aws:x' "
        "starts with 'aws:', which AWS reserves for its own tags [Tags[4]]",
    ]


@pytest.mark.parametrize("job", JOBS)
@pytest.mark.parametrize(
    "instance_type",
    ["ml.g4dn.xlarge", "ml.g5.2xlarge", "ml.p3dn.24xlarge", "ml.p4d.24xlarge", "ml.r5d.large"],
)
def test_no_volume_kms_key_on_instances_with_local_storage(job: JobName, instance_type: str):
    operation, body = _job_request(job, CUSTOMERS[:1], _store())
    config = (
        body["ResourceConfig"]
        if job == "training"
        else body["ProcessingResources"]["ClusterConfig"]
    )
    config["InstanceType"] = instance_type
    problems = [p for p in request_problems(operation, body) if "offer" not in p]
    assert problems == [
        f"FORECAST_KMS_KEY_ID is set, but {instance_type} (FORECAST_{job.upper()}_INSTANCE_TYPE) "
        "has local NVMe instance storage, which the instance encrypts itself: SageMaker refuses a "
        "VolumeKmsKeyId for it. Choose an instance type without instance storage, or leave "
        f"FORECAST_KMS_KEY_ID empty [{validation.render_path((*_config_path(job), 'VolumeKmsKeyId'))}]"
    ]
    del config["VolumeKmsKeyId"]
    assert [p for p in request_problems(operation, body) if "offer" not in p] == []


def _config_path(job: JobName) -> tuple[str, ...]:
    return ("ResourceConfig",) if job == "training" else ("ProcessingResources", "ClusterConfig")


# Every family of botocore's instance types, by whether it has local instance storage (see
# resources/jobs/validation.py for the sources). g7 and g7e are new and unconfirmed: counted
# without, so if they have it SageMaker refuses the job itself, as before this check.
WITH_STORAGE = {"g4dn", "g5", "g6", "g6e", "p3dn", "p4d", "p4de", "p5", "p5e", "p5en", "p6-b200"} | {
    "p6-b300", "p6e-gb200", "r5d", "trn1", "trn1n", "trn2"
}  # fmt: skip
WITHOUT_STORAGE = {"c4", "c5", "c5n", "c6i", "c7i", "c7i-flex", "c8i", "c8i-flex", "g7", "g7e"} | {
    "m4", "m5", "m6i", "m7i", "m7i-flex", "m8i", "m8i-flex", "p2", "p3", "r5", "r6i", "r7i"
} | {"r8i", "r8i-flex", "t3"}  # fmt: skip


def test_instance_storage_families_of_sagemakers_instance_types():
    model = validation._service_model()
    offered = {
        t for shape in ("ProcessingInstanceType", "TrainingInstanceType")
        for t in model.shape_for(shape).enum
    }  # fmt: skip
    families = {t.split(".")[1] for t in offered}
    # A botocore upgrade that brings a new family fails here: look it up in the EC2 list of
    # instance store volumes, then add it to one of the two sets (and to validation.py).
    assert families == WITH_STORAGE | WITHOUT_STORAGE, families ^ (WITH_STORAGE | WITHOUT_STORAGE)
    assert {t.split(".")[1] for t in offered if has_instance_storage(t)} == WITH_STORAGE
    for plain in ("ml.m5.large", "ml.inf2.xlarge", "m5d.large", "ml.m5d"):
        assert not has_instance_storage(plain)
    for family in ("m5d", "c5d", "c6id", "m6id", "r6id", "g4ad", "c7gd"):
        assert has_instance_storage(f"ml.{family}.xlarge")


def test_a_kms_alias_is_refused_for_the_volume():
    operation, body = _job_request("training", CUSTOMERS[:1], _store())
    body["ResourceConfig"]["VolumeKmsKeyId"] = "alias/forecast"
    body["OutputDataConfig"]["KmsKeyId"] = "alias/forecast"  # fine for outputs
    (problem,) = request_problems(operation, body)
    assert problem.startswith("FORECAST_KMS_KEY_ID: 'alias/forecast' is a key alias")


# Settings are checked when they are made ------------------------------------------------------


@pytest.mark.parametrize(
    ("tags", "message"),
    [
        ("aws:team=energy", "tag key 'aws:team' starts with 'aws:'"),
        ("team=AWS:energy", "the value of tag 'team' 'AWS:energy' starts with 'aws:'"),
        ("cost#center=42", "tag key 'cost#center' holds '#'"),
        ("team=energy;power", "holds ';'"),
        (f"{'k' * 129}=v", "is 129 characters, the limit is 128"),
        (f"k={'v' * 257}", "is 257 characters, the limit is 256"),
        ("team=a,team=b", "tag key 'team' is given twice"),
        ("dagster/run-id=x", "namespace forecast_assets sets on every job"),
        ("team", "tag 'team' is not key=value"),
        (
            ",".join(f"t{i}=v" for i in range(MAX_DEPLOYMENT_TAGS + 1)),
            f"{MAX_DEPLOYMENT_TAGS + 1} tags, but a SageMaker job takes at most 50 and every job "
            f"carries up to {len(JOB_OWN_TAG_KEYS)} of its own: at most {MAX_DEPLOYMENT_TAGS} "
            "(remove 1)",
        ),
    ],
)
def test_invalid_forecast_tags_are_refused(tags: str, message: str):
    with pytest.raises(ValueError, match=r"FORECAST_TAGS \(launcher.platform.tags\): ") as caught:
        PlatformSettings(tags=tags)
    assert message in str(caught.value)


def test_valid_forecast_tags_are_kept():
    tags = ",".join(f"t{i}=v {i}" for i in range(MAX_DEPLOYMENT_TAGS))
    assert len(PlatformSettings(tags=tags).tag_map()) == MAX_DEPLOYMENT_TAGS
    assert PlatformSettings(tags=" team = Ökostrom Süd , empty= ").tag_map() == {
        "team": "Ökostrom Süd",
        "empty": "",
    }
    assert MAX_DEPLOYMENT_TAGS + len(JOB_OWN_TAG_KEYS) == MAX_TAGS


@pytest.mark.parametrize(
    "key",
    [KMS_ARN, "1234abcd-12ab-34cd-56ef-1234567890ab", "mrk-1234abcd12ab34cd56ef1234567890ab", ""],
)
def test_kms_key_ids_and_arns_are_accepted(key: str):
    assert PlatformSettings(kms_key_id=key).kms_key_id == key


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("alias/forecast", "is a key alias"),
        ("arn:aws:kms:eu-central-1:123456789012:alias/forecast", "is a key alias"),
        ("forecast-key", "neither a KMS key id"),
    ],
)
def test_kms_aliases_and_junk_are_refused(key: str, message: str):
    with pytest.raises(ValueError, match="FORECAST_KMS_KEY_ID") as caught:
        PlatformSettings(kms_key_id=key)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"subnets": "subnet-1"}, "FORECAST_SUBNETS is set but FORECAST_SECURITY_GROUP_IDS is empty"),
        ({"security_group_ids": "sg-1"}, "FORECAST_SECURITY_GROUP_IDS is set but FORECAST_SUBNETS is empty"),
        ({"subnets": ",".join(f"subnet-{i}" for i in range(17)), "security_group_ids": "sg-1"}, "FORECAST_SUBNETS (launcher.platform.subnets): 17 ids, SageMaker takes at most 16"),
        ({"subnets": "subnet-1", "security_group_ids": ",".join(f"sg-{i}" for i in range(6))}, "6 ids, SageMaker takes at most 5"),
        ({"subnets": "subnet_1", "security_group_ids": "sg-1"}, "'subnet_1' is not an id"),
    ],
)  # fmt: skip
def test_invalid_vpc_settings_are_refused(fields: dict[str, str], message: str):
    with pytest.raises(ValueError) as caught:
        PlatformSettings(**fields)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"instance_count": 0}, "FORECAST_<JOB>_INSTANCE_COUNT is 0, SageMaker takes at least 1"),
        ({"volume_size_gb": 0}, "FORECAST_<JOB>_VOLUME_SIZE_GB is 0"),
        ({"max_runtime_seconds": 0}, "FORECAST_<JOB>_MAX_RUNTIME_SECONDS is 0, SageMaker takes 1-2419200"),
        ({"max_runtime_seconds": 2_419_201}, "FORECAST_<JOB>_MAX_RUNTIME_SECONDS is 2419201"),
        ({"spot_max_wait_seconds": -1}, "FORECAST_TRAINING_SPOT_MAX_WAIT_SECONDS is -1"),
        ({"instance_type": "m5.large"}, "SageMaker instance types start with 'ml.'"),
        ({"image_uri": "i" * 256}, "FORECAST_<JOB>_IMAGE_URI is 256 characters, SageMaker takes 255"),
    ],
)  # fmt: skip
def test_invalid_job_settings_are_refused(fields: dict[str, Any], message: str):
    with pytest.raises(ValueError) as caught:
        JobSettings(**{"image_uri": "i", **fields})
    assert message in str(caught.value)


def test_settings_are_checked_at_launch_not_when_definitions_load(monkeypatch: pytest.MonkeyPatch):
    """With dg.EnvVar fields nothing is read or checked when definitions load; the run that
    resolves a bad FORECAST_TAGS fails before any step, naming it."""
    from forecast_assets.definitions import resources_for

    for var in ("FORECAST_TAGS", "FORECAST_KMS_KEY_ID", "FORECAST_SUBNETS"):
        monkeypatch.delenv(var, raising=False)
    resources = resources_for("sagemaker")  # no FORECAST_* variable set: nothing is read

    @dg.asset
    def probe(launcher: JobLauncher) -> None:
        launcher.platform.tag_map()

    defs = dg.Definitions(
        assets=[probe], resources={"launcher": resources["launcher"], "store": resources["store"]}
    )
    settings = {
        "FORECAST_AWS_REGION": "eu-central-1",
        "FORECAST_BUCKET": BUCKET,
        "FORECAST_PREFIX": PREFIX,
        "FORECAST_SAGEMAKER_ROLE_ARN": ROLE,
        "FORECAST_KMS_KEY_ID": "",
        "FORECAST_SUBNETS": "",
        "FORECAST_SECURITY_GROUP_IDS": "",
        "FORECAST_TAGS": "team=energy,aws:owner=me",
    }
    for job in JOBS:
        for field, value in (
            ("IMAGE_URI", IMAGE.format(job=job)),
            ("INSTANCE_TYPE", "ml.m5.large"),
            ("INSTANCE_COUNT", "1"),
            ("VOLUME_SIZE_GB", "30"),
            ("MAX_RUNTIME_SECONDS", "3600"),
        ):
            settings[f"FORECAST_{job.upper()}_{field}"] = value
    settings["FORECAST_TRAINING_SPOT_MAX_WAIT_SECONDS"] = "0"
    for var, value in settings.items():
        monkeypatch.setenv(var, value)
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "RESOURCE_INIT_FAILURE")
    assert "FORECAST_TAGS (launcher.platform.tags): tag key 'aws:owner' starts with 'aws:'" in str(
        failure.event_specific_data
    )
    monkeypatch.setenv("FORECAST_TAGS", "team=energy")
    assert defs.resolve_implicit_global_asset_job_def().execute_in_process().success


def test_decoding_matches_dagster_pipes():
    params = {"bucket": BUCKET, "key": f"{PREFIX}/pipes/abc/context.json"}
    assert decode_param(encode_param(params)) == params
    assert validation._deployment(
        {"Environment": {"DAGSTER_PIPES_CONTEXT": encode_param(params)}}
    ) == (
        BUCKET,
        PREFIX,
    )
    # Without Pipes parameters, the prefix is what the body's URIs share.
    _, body = _job_request("training", CUSTOMERS[:1], _store())
    assert validation._deployment(body) == (BUCKET, PREFIX)
