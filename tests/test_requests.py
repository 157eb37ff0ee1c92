"""Job requests are exactly boto3's CreateProcessingJob / CreateTrainingJob bodies, job names are
valid SageMaker names, and code bundles are content-addressed and published once."""

from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from forecast_assets.customers import MAX_CUSTOMER_ID_LENGTH, validate_customer_id
from resources.jobs import code as job_code
from resources.jobs import validation
from resources.jobs.requests import (
    JobInput,
    JobOutput,
    job_name,
    model_artifact_uri,
    output_data_uri,
    processing_job_request,
    training_job_request,
)
from resources.jobs.settings import JOB_NAMES, LOCAL_ROLE_ARN, JobSettings, PlatformSettings
from resources.jobs.validation import Operation
from resources.storage import LocalObjectStore

SAGEMAKER_JOB_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
ROLE = "arn:aws:iam::123456789012:role/forecast-jobs"
RUN_ID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
SETTINGS = JobSettings(
    image_uri="123456789012.dkr.ecr.eu-west-1.amazonaws.com/forecast/preprocessing:1.2.3",
    instance_type="ml.c5.2xlarge",
    instance_count=2,
    volume_size_gb=50,
    max_runtime_seconds=900,
)


def _longest_id() -> str:
    value = "z" + "0123456789-abcdefghij-klmnopqrs"[: MAX_CUSTOMER_ID_LENGTH - 1]
    assert len(value) == MAX_CUSTOMER_ID_LENGTH == 32
    return validate_customer_id(value)


def _processing() -> dict[str, Any]:
    return processing_job_request(
        name="fa-prep-acme-0f1e2d3c-0",
        settings=SETTINGS,
        role_arn=ROLE,
        entrypoint=["python3", "/opt/ml/processing/input/code/preprocess.py"],
        arguments=["--customer", "acme", "--days", "30"],
        inputs=[
            JobInput("raw", "s3://bkt/manifests/acme/raw_load.manifest", "ManifestFile"),
            JobInput("code", "s3://bkt/code/preprocessing/abc/"),
        ],
        outputs=[
            JobOutput("clean", "s3://bkt/preprocessed/acme/run/"),
            JobOutput("report", "s3://bkt/reports/acme/run/"),
        ],
        environment={"CUSTOMER_ID": "acme", "LOG_LEVEL": "INFO"},
        tags={"run": RUN_ID, "customer": "acme", "long": "v" * 300},
    )


def _training() -> dict[str, Any]:
    return training_job_request(
        name="fa-train-acme-0f1e2d3c-1",
        settings=SETTINGS,
        role_arn=ROLE,
        program="train.py",
        source_uri="s3://bkt/code/training/abc/sourcedir.tar.gz",
        hyperparameters={"horizon": 96, "alpha": 0.5, "features": ["hour", "dow"], "name": "x"},
        channels=[
            JobInput("train", "s3://bkt/preprocessed/acme/run/train/"),
            JobInput("holdout", "s3://bkt/preprocessed/acme/run/holdout.manifest", "ManifestFile"),
        ],
        output_uri="s3://bkt/models/acme/",
        environment={"CUSTOMER_ID": "acme"},
        tags={"customer": "acme"},
    )


# Processing ------------------------------------------------------------------------------------


def test_processing_job_request_shape():
    assert _processing() == {
        "ProcessingJobName": "fa-prep-acme-0f1e2d3c-0",
        "RoleArn": ROLE,
        "AppSpecification": {
            "ImageUri": SETTINGS.image_uri,
            "ContainerEntrypoint": ["python3", "/opt/ml/processing/input/code/preprocess.py"],
            "ContainerArguments": ["--customer", "acme", "--days", "30"],
        },
        "ProcessingResources": {
            "ClusterConfig": {
                "InstanceCount": 2,
                "InstanceType": "ml.c5.2xlarge",
                "VolumeSizeInGB": 50,
            }
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": 900},
        "ProcessingInputs": [
            {
                "InputName": "raw",
                "S3Input": {
                    "S3Uri": "s3://bkt/manifests/acme/raw_load.manifest",
                    "LocalPath": "/opt/ml/processing/input/raw",
                    "S3DataType": "ManifestFile",
                    "S3InputMode": "File",
                    "S3DataDistributionType": "FullyReplicated",
                },
            },
            {
                "InputName": "code",
                "S3Input": {
                    "S3Uri": "s3://bkt/code/preprocessing/abc/",
                    "LocalPath": "/opt/ml/processing/input/code",
                    "S3DataType": "S3Prefix",
                    "S3InputMode": "File",
                    "S3DataDistributionType": "FullyReplicated",
                },
            },
        ],
        "ProcessingOutputConfig": {
            "Outputs": [
                {
                    "OutputName": "clean",
                    "S3Output": {
                        "S3Uri": "s3://bkt/preprocessed/acme/run/",
                        "LocalPath": "/opt/ml/processing/output/clean",
                        "S3UploadMode": "EndOfJob",
                    },
                },
                {
                    "OutputName": "report",
                    "S3Output": {
                        "S3Uri": "s3://bkt/reports/acme/run/",
                        "LocalPath": "/opt/ml/processing/output/report",
                        "S3UploadMode": "EndOfJob",
                    },
                },
            ]
        },
        "Environment": {"CUSTOMER_ID": "acme", "LOG_LEVEL": "INFO"},
        "Tags": [
            {"Key": "customer", "Value": "acme"},
            {"Key": "long", "Value": "v" * 256},
            {"Key": "run", "Value": RUN_ID},
        ],
    }


def test_processing_job_request_minimal():
    request = processing_job_request(
        name="n", settings=SETTINGS, role_arn=ROLE, entrypoint=["python3", "x.py"]
    )
    # CreateProcessingJob rejects an empty ContainerArguments list (minimum length 1).
    assert request["AppSpecification"] == {
        "ImageUri": SETTINGS.image_uri,
        "ContainerEntrypoint": ["python3", "x.py"],
    }
    assert request["ProcessingInputs"] == []
    assert request["ProcessingOutputConfig"] == {"Outputs": []}
    assert request["Environment"] == {}
    assert request["Tags"] == []


def test_processing_request_is_json_serializable_and_copies_its_inputs():
    entrypoint = ["python3", "x.py"]
    env = {"A": "1"}
    request = processing_job_request(
        name="n", settings=SETTINGS, role_arn=ROLE, entrypoint=entrypoint, environment=env
    )
    assert json.loads(json.dumps(request)) == request
    entrypoint.append("mutated")
    env["B"] = "2"
    assert request["AppSpecification"]["ContainerEntrypoint"] == ["python3", "x.py"]
    assert request["Environment"] == {"A": "1"}


# Training --------------------------------------------------------------------------------------


def test_training_job_request_shape():
    assert _training() == {
        "TrainingJobName": "fa-train-acme-0f1e2d3c-1",
        "RoleArn": ROLE,
        "AlgorithmSpecification": {
            "TrainingImage": SETTINGS.image_uri,
            "TrainingInputMode": "File",
        },
        "HyperParameters": {
            "alpha": "0.5",
            "features": '["hour", "dow"]',
            "horizon": "96",
            "name": '"x"',
            "sagemaker_program": '"train.py"',
            "sagemaker_submit_directory": '"s3://bkt/code/training/abc/sourcedir.tar.gz"',
        },
        "InputDataConfig": [
            {
                "ChannelName": "train",
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": "s3://bkt/preprocessed/acme/run/train/",
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
                "InputMode": "File",
            },
            {
                "ChannelName": "holdout",
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "ManifestFile",
                        "S3Uri": "s3://bkt/preprocessed/acme/run/holdout.manifest",
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
                "InputMode": "File",
            },
        ],
        "OutputDataConfig": {"S3OutputPath": "s3://bkt/models/acme/"},
        "ResourceConfig": {
            "InstanceType": "ml.c5.2xlarge",
            "InstanceCount": 2,
            "VolumeSizeInGB": 50,
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": 900},
        "Environment": {"CUSTOMER_ID": "acme"},
        "Tags": [{"Key": "customer", "Value": "acme"}],
    }


def test_hyperparameters_are_json_strings_that_decode_back():
    hps = _training()["HyperParameters"]
    assert all(isinstance(v, str) for v in hps.values())
    assert {k: json.loads(v) for k, v in hps.items()} == {
        "alpha": 0.5,
        "features": ["hour", "dow"],
        "horizon": 96,
        "name": "x",
        "sagemaker_program": "train.py",
        "sagemaker_submit_directory": "s3://bkt/code/training/abc/sourcedir.tar.gz",
    }


def test_model_and_output_data_uris():
    request = _training()
    assert (
        model_artifact_uri(request)
        == "s3://bkt/models/acme/fa-train-acme-0f1e2d3c-1/output/model.tar.gz"
    )
    assert (
        output_data_uri(request)
        == "s3://bkt/models/acme/fa-train-acme-0f1e2d3c-1/output/output.tar.gz"
    )
    no_slash = {**request, "OutputDataConfig": {"S3OutputPath": "s3://bkt/models"}}
    assert model_artifact_uri(no_slash) == (
        "s3://bkt/models/fa-train-acme-0f1e2d3c-1/output/model.tar.gz"
    )
    assert output_data_uri(no_slash) == (
        "s3://bkt/models/fa-train-acme-0f1e2d3c-1/output/output.tar.gz"
    )


# Against the real API model --------------------------------------------------------------------


def _validate(operation: Operation, request: dict[str, Any]) -> tuple[str, list[str]]:
    """botocore's own report, and every constraint of the service model it leaves to the service
    (resources.jobs.validation walks the model: enums, maximum lengths, patterns, ranges)."""
    from botocore.validate import ParamValidator

    report = ParamValidator().validate(request, validation.input_shape(operation))
    violations = [str(f) for f in validation.model_findings(operation, request)]
    # What launchers run: the same checks, with each problem naming its setting.
    if not report.has_errors() and not violations:
        assert validation.request_problems(operation, request) == []
    return report.generate_report(), violations


def _real_processing(name: str) -> dict[str, Any]:
    return processing_job_request(
        name=name,
        settings=JobSettings(image_uri="123456789012.dkr.ecr.eu-west-1.amazonaws.com/p:1"),
        role_arn=ROLE,
        entrypoint=["python3", "/opt/ml/processing/input/code/preprocess.py"],
        arguments=["--customer", "acme"],
        inputs=[
            JobInput("raw", "s3://bkt/manifests/acme/raw_load.manifest", "ManifestFile"),
            JobInput("code", "s3://bkt/code/preprocessing/abc/"),
        ],
        outputs=[JobOutput("clean", "s3://bkt/preprocessed/acme/run/")],
        environment={"CUSTOMER_ID": "acme"},
        tags={"customer": "acme", "run": RUN_ID},
    )


def test_processing_request_is_valid_for_the_sagemaker_api():
    for request in [
        _processing(),
        _real_processing(job_name("preprocessing", _longest_id(), RUN_ID, 12)),
        processing_job_request(
            name="n", settings=SETTINGS, role_arn=LOCAL_ROLE_ARN, entrypoint=["python3", "x.py"]
        ),
    ]:
        assert _validate("CreateProcessingJob", request) == ("", [])


def test_training_request_is_valid_for_the_sagemaker_api():
    request = training_job_request(
        name=job_name("training", _longest_id(), RUN_ID, 3),
        settings=JobSettings(image_uri="123456789012.dkr.ecr.eu-west-1.amazonaws.com/t:1"),
        role_arn=LOCAL_ROLE_ARN,
        program="train.py",
        source_uri="s3://bkt/code/training/abc/sourcedir.tar.gz",
        hyperparameters={"horizon": 96, "alpha": 0.5},
        channels=[JobInput("train", "s3://bkt/preprocessed/acme/run/")],
        output_uri="s3://bkt/models/acme",
        environment={"CUSTOMER_ID": "acme"},
        tags={"customer": "acme"},
    )
    assert _validate("CreateTrainingJob", request) == ("", [])
    assert _validate("CreateTrainingJob", _training()) == ("", [])


def test_the_validator_catches_a_broken_request():
    """The check above can fail: a misspelt key and a wrong type are reported."""
    request = _processing()
    request["ProcessingResources"]["ClusterConfig"]["InstanceCount"] = "2"
    request["StoppingCondition"]["MaxRuntime"] = 5
    report, _ = _validate("CreateProcessingJob", request)
    assert "ProcessingResources.ClusterConfig.InstanceCount" in report
    assert "MaxRuntime" in report
    bad = _processing()
    bad["ProcessingInputs"][0]["S3Input"]["S3DataType"] = "Folder"
    bad["ProcessingJobName"] = "-bad_name"
    _, violations = _validate("CreateProcessingJob", bad)
    assert len(violations) == 2


# Job names -------------------------------------------------------------------------------------


def test_job_name_is_deterministic_and_exact():
    assert job_name("training", "acme", RUN_ID, 1) == "fa-train-acme-0f1e2d3c-1"
    assert job_name("preprocessing", "acme", RUN_ID) == "fa-prep-acme-0f1e2d3c-0"
    assert job_name("inference", "acme", RUN_ID, 2) == "fa-infer-acme-0f1e2d3c-2"
    assert job_name("training", "acme", RUN_ID, 1) == job_name("training", "acme", RUN_ID, 1)


@pytest.mark.parametrize("step", JOB_NAMES)
@pytest.mark.parametrize("attempt", [0, 9, 99, 12345])
def test_job_name_for_the_longest_customer_id_is_valid(step: str, attempt: int):
    name = job_name(step, _longest_id(), RUN_ID, attempt)
    assert len(name) <= 63
    assert SAGEMAKER_JOB_NAME.fullmatch(name)
    assert name.endswith(f"-{_longest_id()}-0f1e2d3c-{attempt}")


def test_job_name_for_a_hyphenated_id_is_valid():
    name = job_name("training", "a--b-1", RUN_ID)
    assert name == "fa-train-a--b-1-0f1e2d3c-0"
    assert SAGEMAKER_JOB_NAME.fullmatch(name)


def test_job_names_differ_by_attempt_run_step_and_customer():
    other_run = "9a8b7c6d-0000-0000-0000-000000000000"
    names = {
        job_name("training", "acme", RUN_ID, 0),
        job_name("training", "acme", RUN_ID, 1),
        job_name("training", "acme", other_run, 0),
        job_name("inference", "acme", RUN_ID, 0),
        job_name("training", "acme-2", RUN_ID, 0),
    }
    assert len(names) == 5


def test_job_name_rejects_what_sagemaker_would():
    with pytest.raises(ValueError, match="not valid for SageMaker"):
        job_name("training", "acme_corp", RUN_ID)
    with pytest.raises(ValueError, match="not valid for SageMaker"):
        job_name("training", "x" * 60, RUN_ID)


# Code bundles ----------------------------------------------------------------------------------


def test_bundle_contents_match_the_containers_folder():
    bundle = job_code.bundle("training")
    containers = job_code.CONTAINERS_DIR
    core = sorted(
        p.relative_to(containers / "shared").as_posix()
        for p in (containers / "shared" / "forecast_core").rglob("*.py")
    )
    assert bundle.job == "training"
    assert bundle.entry_script == "train.py"
    assert sorted(bundle.files) == sorted(["train.py", "requirements.txt", *core])
    assert {
        "forecast_core/__init__.py",
        "forecast_core/runtime.py",
        "forecast_core/features.py",
    } <= set(bundle.files)
    assert bundle.files["train.py"] == (containers / "training" / "train.py").read_bytes()
    assert (
        bundle.files["requirements.txt"]
        == (containers / "training" / "requirements.txt").read_bytes()
    )
    for name in core:
        assert bundle.files[name] == (containers / "shared" / name).read_bytes()


ENTRIES = {"preprocess.py", "train.py", "predict.py"}


@pytest.mark.parametrize(
    ("job", "entry"),
    [("preprocessing", "preprocess.py"), ("training", "train.py"), ("inference", "predict.py")],
)
def test_each_job_bundles_its_entry_script(job: str, entry: str):
    bundle = job_code.bundle(job)  # type: ignore[arg-type]
    assert bundle.entry_script == entry
    assert entry in bundle.files
    assert (ENTRIES - {entry}) & set(bundle.files) == set()


@pytest.fixture
def containers(tmp_path: Path) -> Path:
    copy = tmp_path / "containers"
    shutil.copytree(job_code.CONTAINERS_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_digest_is_stable_and_content_addressed(containers: Path):
    real = job_code.bundle("training")
    copied = job_code.bundle("training", containers_dir=containers)
    assert re.fullmatch(r"[0-9a-f]{16}", real.digest)
    assert real.digest == job_code.bundle("training").digest
    # A copy elsewhere with other mtimes: same content, same digest.
    assert copied.digest == real.digest


def test_digest_changes_when_any_bundled_file_changes(containers: Path):
    before = job_code.bundle("training", containers_dir=containers).digest
    (containers / "training" / "train.py").write_bytes(
        (containers / "training" / "train.py").read_bytes() + b"\n# changed\n"
    )
    after_entry = job_code.bundle("training", containers_dir=containers).digest
    assert after_entry != before
    (containers / "shared" / "forecast_core" / "metrics.py").write_text("# changed\n")
    after_core = job_code.bundle("training", containers_dir=containers).digest
    assert after_core not in (before, after_entry)
    (containers / "training" / "requirements.txt").write_text("pandas\n")
    assert job_code.bundle("training", containers_dir=containers).digest not in (
        before,
        after_entry,
        after_core,
    )


def test_digest_covers_new_core_modules_and_ignores_other_files(containers: Path):
    before = job_code.bundle("training", containers_dir=containers)
    (containers / "training" / "NOTES.md").write_text("not code")
    (containers / "shared" / "forecast_core" / "README.txt").write_text("not code")
    assert job_code.bundle("training", containers_dir=containers).digest == before.digest
    (containers / "shared" / "forecast_core" / "sub").mkdir()
    (containers / "shared" / "forecast_core" / "sub" / "extra.py").write_text("X = 1\n")
    after = job_code.bundle("training", containers_dir=containers)
    assert "forecast_core/sub/extra.py" in after.files
    assert after.digest != before.digest
    # The digest depends on names too, not only on contents.
    renamed = job_code.CodeBundle(
        job="training",
        entry_script="train.py",
        files={("x" + k if k == "requirements.txt" else k): v for k, v in before.files.items()},
    )
    assert renamed.digest != before.digest


def test_tarball_is_reproducible(monkeypatch: pytest.MonkeyPatch, containers: Path):
    bundle = job_code.bundle("training")
    first = bundle.tarball()
    assert bundle.tarball() == first
    # Built later (gzip headers carry a time) and from a copy with other file times.
    later = time.time() + 3 * 86400
    monkeypatch.setattr(time, "time", lambda: later)
    assert job_code.bundle("training", containers_dir=containers).tarball() == first


def test_tarball_contents(containers: Path):
    bundle = job_code.bundle("training", containers_dir=containers)
    with tarfile.open(fileobj=io.BytesIO(bundle.tarball()), mode="r:gz") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == sorted(bundle.files)
        for member in members:
            assert member.isfile()
            assert (member.mode, member.mtime, member.uid, member.gid) == (0o644, 0, 0, 0)
            extracted = tar.extractfile(member)
            assert extracted is not None
            assert extracted.read() == bundle.files[member.name]


def _snapshot(store: LocalObjectStore) -> dict[str, tuple[str, int]]:
    return {
        o.key: (o.etag, store._path(o.uri).stat().st_mtime_ns)
        for o in store.list_objects(store.uri())
    }


def _count_writes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    writes: list[str] = []
    real = LocalObjectStore.write_bytes

    def counting(self, uri: str, data: bytes):
        writes.append(uri)
        return real(self, uri, data)

    monkeypatch.setattr(LocalObjectStore, "write_bytes", counting)
    return writes


def test_publish_folder_uploads_once(store: LocalObjectStore, monkeypatch: pytest.MonkeyPatch):
    bundle = job_code.bundle("preprocessing")
    writes = _count_writes(monkeypatch)
    prefix = job_code.publish_folder(store, bundle)
    assert prefix == f"s3://forecast-assets/code/preprocessing/{bundle.digest}/"
    assert sorted(writes) == sorted(prefix + name for name in bundle.files)
    assert {o.key: store.read_bytes(o.uri) for o in store.list_objects(prefix)} == {
        f"code/preprocessing/{bundle.digest}/{name}": data for name, data in bundle.files.items()
    }
    before = _snapshot(store)
    writes.clear()
    time.sleep(0.01)
    assert job_code.publish_folder(store, bundle) == prefix
    assert writes == []
    assert _snapshot(store) == before


def test_publish_tarball_uploads_once(store: LocalObjectStore, monkeypatch: pytest.MonkeyPatch):
    bundle = job_code.bundle("training")
    writes = _count_writes(monkeypatch)
    uri = job_code.publish_tarball(store, bundle)
    assert uri == f"s3://forecast-assets/code/training/{bundle.digest}/sourcedir.tar.gz"
    assert writes == [uri]
    assert store.read_bytes(uri) == bundle.tarball()
    before = _snapshot(store)
    writes.clear()
    time.sleep(0.01)
    assert job_code.publish_tarball(store, bundle) == uri
    assert writes == []
    assert _snapshot(store) == before
    assert list(before) == [f"code/training/{bundle.digest}/sourcedir.tar.gz"]


def test_changed_code_is_published_beside_the_old(store: LocalObjectStore, containers: Path):
    old = job_code.publish_tarball(store, job_code.bundle("training", containers_dir=containers))
    (containers / "training" / "train.py").write_text("print('v2')\n")
    new = job_code.publish_tarball(store, job_code.bundle("training", containers_dir=containers))
    assert new != old
    assert [o.uri for o in store.list_objects(store.uri("code", "training"))] == sorted([old, new])


PLATFORM = PlatformSettings(
    kms_key_id="arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    subnets="subnet-0a1b2c3d, subnet-4e5f6a7b",
    security_group_ids="sg-0123456789abcdef0",
    tags="team=energy,customer=overridden",
)


def test_platform_settings_reach_processing_requests():
    request = processing_job_request(
        name="fa-prep-acme-0",
        settings=SETTINGS,
        role_arn=ROLE,
        entrypoint=["python3", "x.py"],
        outputs=[JobOutput("out", "s3://bkt/jobs/x/out")],
        tags={"customer": "acme"},
        platform=PLATFORM,
    )
    assert request["ProcessingResources"]["ClusterConfig"]["VolumeKmsKeyId"] == PLATFORM.kms_key_id
    assert request["ProcessingOutputConfig"]["KmsKeyId"] == PLATFORM.kms_key_id
    assert request["NetworkConfig"] == {
        "VpcConfig": {
            "Subnets": ["subnet-0a1b2c3d", "subnet-4e5f6a7b"],
            "SecurityGroupIds": ["sg-0123456789abcdef0"],
        }
    }
    # The job's own tags win over the deployment's.
    assert request["Tags"] == [
        {"Key": "customer", "Value": "acme"},
        {"Key": "team", "Value": "energy"},
    ]
    assert _validate("CreateProcessingJob", request) == ("", [])


def test_spot_training_with_checkpoints_and_platform_settings():
    settings = JobSettings(image_uri="i", max_runtime_seconds=1800, spot_max_wait_seconds=3600)
    request = training_job_request(
        name="fa-train-acme-0",
        settings=settings,
        role_arn=ROLE,
        program="train.py",
        source_uri="s3://bkt/code/training/abc/sourcedir.tar.gz",
        hyperparameters={},
        channels=[JobInput("train", "s3://bkt/preprocessed/acme/load.parquet")],
        output_uri="s3://bkt/models/acme",
        platform=PLATFORM,
        checkpoint_uri="s3://bkt/checkpoints/acme",
    )
    assert request["EnableManagedSpotTraining"] is True
    assert request["StoppingCondition"] == {
        "MaxRuntimeInSeconds": 1800,
        "MaxWaitTimeInSeconds": 3600,
    }
    assert request["CheckpointConfig"] == {
        "S3Uri": "s3://bkt/checkpoints/acme",
        "LocalPath": "/opt/ml/checkpoints",
    }
    assert request["ResourceConfig"]["VolumeKmsKeyId"] == PLATFORM.kms_key_id
    assert request["VpcConfig"]["Subnets"] == ["subnet-0a1b2c3d", "subnet-4e5f6a7b"]
    assert _validate("CreateTrainingJob", request) == ("", [])
    with pytest.raises(ValueError, match="spot training needs a checkpoint_uri"):
        training_job_request(
            name="fa-train-acme-0",
            settings=settings,
            role_arn=ROLE,
            program="train.py",
            source_uri="s3://b/s.tar.gz",
            hyperparameters={},
            channels=[],
            output_uri="s3://b/m",
        )


def test_training_without_channels_sends_no_input_config():
    request = training_job_request(
        name="fa-train-acme-0",
        settings=SETTINGS,
        role_arn=ROLE,
        program="train.py",
        source_uri="s3://b/s.tar.gz",
        hyperparameters={},
        channels=[],
        output_uri="s3://b/m",
    )
    assert "InputDataConfig" not in request
    assert _validate("CreateTrainingJob", request) == ("", [])


@pytest.mark.parametrize("bad", ["team", "=x", "a=1,b"])
def test_malformed_platform_tags_are_refused(bad):
    # Refused when the settings are made (at launch, once FORECAST_TAGS is resolved).
    with pytest.raises(ValueError, match=r"FORECAST_TAGS .*is not key=value"):
        PlatformSettings(tags=bad)
