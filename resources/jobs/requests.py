"""Pure builders of SageMaker job requests, shared by every launcher.

The dictionaries returned are exactly the bodies of boto3's ``create_processing_job`` and
``create_training_job``. The local launcher executes the same bodies, so what runs on a laptop is
what would run on SageMaker.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from resources.jobs.settings import JobSettings, PlatformSettings

PROCESSING_INPUT_ROOT = "/opt/ml/processing/input"
PROCESSING_OUTPUT_ROOT = "/opt/ml/processing/output"

# SageMaker job names: 1-63 characters, alphanumerics and hyphens, starting alphanumeric.
_JOB_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
_STEP_ABBREVIATIONS = {"preprocessing": "prep", "training": "train", "inference": "infer"}


def job_name(step: str, customer_id: str, run_id: str, attempt: int = 0) -> str:
    """A SageMaker-valid, deterministic name for one step of one run for one customer."""
    abbrev = _STEP_ABBREVIATIONS.get(step, step)
    name = f"fa-{abbrev}-{customer_id}-{run_id.replace('-', '')[:8]}-{attempt}"
    if not _JOB_NAME.match(name):
        raise ValueError(f"job name {name!r} is not valid for SageMaker")
    return name


def step_of_job_name(name: str) -> str | None:
    """The step (``preprocessing``, ``training``, ``inference``) a job name was made for, if any.

    Also for a relaunched attempt (``…-a2``), which keeps the name's start.
    """
    for step, abbrev in _STEP_ABBREVIATIONS.items():
        if name.startswith(f"fa-{abbrev}-"):
            return step
    return None


@dataclass(frozen=True)
class JobInput:
    """An S3 input staged into the job before its script starts."""

    name: str
    uri: str
    data_type: Literal["S3Prefix", "ManifestFile"] = "S3Prefix"


@dataclass(frozen=True)
class JobOutput:
    """A folder the job writes that is uploaded to ``uri`` when the job ends."""

    name: str
    uri: str


def processing_local_path(kind: Literal["input", "output"], name: str) -> str:
    return f"{PROCESSING_INPUT_ROOT if kind == 'input' else PROCESSING_OUTPUT_ROOT}/{name}"


def _tags(
    tags: Mapping[str, str], platform: PlatformSettings | None = None
) -> list[dict[str, str]]:
    merged = {**(platform.tag_map() if platform else {}), **tags}
    return [{"Key": k, "Value": v[:256]} for k, v in sorted(merged.items())]


def _vpc(platform: PlatformSettings | None) -> dict[str, Any] | None:
    if platform is None or not platform.subnet_list():
        return None
    return {"Subnets": platform.subnet_list(), "SecurityGroupIds": platform.security_group_list()}


def processing_job_request(
    *,
    name: str,
    settings: JobSettings,
    role_arn: str,
    entrypoint: Sequence[str],
    arguments: Sequence[str] = (),
    inputs: Sequence[JobInput] = (),
    outputs: Sequence[JobOutput] = (),
    environment: Mapping[str, str] | None = None,
    tags: Mapping[str, str] | None = None,
    platform: PlatformSettings | None = None,
) -> dict[str, Any]:
    """Body of CreateProcessingJob. Inputs land in /opt/ml/processing/input/<name>.

    ``platform`` adds the deployment's KMS key, VPC and tags (its tags yield to ``tags``).
    """
    request: dict[str, Any] = {
        "ProcessingJobName": name,
        "RoleArn": role_arn,
        "AppSpecification": {
            "ImageUri": settings.image_uri,
            "ContainerEntrypoint": list(entrypoint),
            # The API rejects an empty list (minimum length 1): no arguments means no key.
            **({"ContainerArguments": list(arguments)} if arguments else {}),
        },
        "ProcessingResources": {
            "ClusterConfig": {
                "InstanceCount": settings.instance_count,
                "InstanceType": settings.instance_type,
                "VolumeSizeInGB": settings.volume_size_gb,
            }
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": settings.max_runtime_seconds},
        "ProcessingInputs": [
            {
                "InputName": i.name,
                "S3Input": {
                    "S3Uri": i.uri,
                    "LocalPath": processing_local_path("input", i.name),
                    "S3DataType": i.data_type,
                    "S3InputMode": "File",
                    "S3DataDistributionType": "FullyReplicated",
                },
            }
            for i in inputs
        ],
        "ProcessingOutputConfig": {
            "Outputs": [
                {
                    "OutputName": o.name,
                    "S3Output": {
                        "S3Uri": o.uri,
                        "LocalPath": processing_local_path("output", o.name),
                        "S3UploadMode": "EndOfJob",
                    },
                }
                for o in outputs
            ]
        },
        "Environment": dict(environment or {}),
        "Tags": _tags(tags or {}, platform),
    }
    kms = platform.kms_key_id if platform else ""
    if kms:
        request["ProcessingResources"]["ClusterConfig"]["VolumeKmsKeyId"] = kms
        request["ProcessingOutputConfig"]["KmsKeyId"] = kms
    if vpc := _vpc(platform):
        request["NetworkConfig"] = {"VpcConfig": vpc}
    return request


def training_job_request(
    *,
    name: str,
    settings: JobSettings,
    role_arn: str,
    program: str,
    source_uri: str,
    hyperparameters: Mapping[str, Any],
    channels: Sequence[JobInput],
    output_uri: str,
    environment: Mapping[str, str] | None = None,
    tags: Mapping[str, str] | None = None,
    platform: PlatformSettings | None = None,
    checkpoint_uri: str | None = None,
) -> dict[str, Any]:
    """Body of CreateTrainingJob in script mode.

    ``sagemaker_program`` and ``sagemaker_submit_directory`` tell SageMaker's training toolkit
    (in the prebuilt framework images) which script to run from which source bundle; the model
    lands at ``<output_uri>/<name>/output/model.tar.gz``. Hyperparameter values are JSON-encoded
    strings, as the SageMaker SDK sends them.

    With ``settings.spot_max_wait_seconds`` above 0 the job uses managed spot capacity, and
    ``checkpoint_uri`` is synced with ``/opt/ml/checkpoints``. The training script writes no
    checkpoints (one customer's fit takes minutes), so a job that loses its spot instance starts
    over; the wait ceiling covers that.
    """
    hps = {k: json.dumps(v) for k, v in sorted(hyperparameters.items())}
    hps["sagemaker_program"] = json.dumps(program)
    hps["sagemaker_submit_directory"] = json.dumps(source_uri)
    request: dict[str, Any] = {
        "TrainingJobName": name,
        "RoleArn": role_arn,
        "AlgorithmSpecification": {
            "TrainingImage": settings.image_uri,
            "TrainingInputMode": "File",
        },
        "HyperParameters": hps,
        # The API refuses an empty list; a job with no channels sends no key.
        "InputDataConfig": [
            {
                "ChannelName": c.name,
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": c.data_type,
                        "S3Uri": c.uri,
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
                "InputMode": "File",
            }
            for c in channels
        ],
        "OutputDataConfig": {"S3OutputPath": output_uri},
        "ResourceConfig": {
            "InstanceType": settings.instance_type,
            "InstanceCount": settings.instance_count,
            "VolumeSizeInGB": settings.volume_size_gb,
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": settings.max_runtime_seconds},
        "Environment": dict(environment or {}),
        "Tags": _tags(tags or {}, platform),
    }
    if not request["InputDataConfig"]:
        del request["InputDataConfig"]
    kms = platform.kms_key_id if platform else ""
    if kms:
        request["ResourceConfig"]["VolumeKmsKeyId"] = kms
        request["OutputDataConfig"]["KmsKeyId"] = kms
    if vpc := _vpc(platform):
        request["VpcConfig"] = vpc
    if settings.spot_max_wait_seconds > 0:
        if not checkpoint_uri:
            raise ValueError(f"training job {name}: spot training needs a checkpoint_uri")
        request["EnableManagedSpotTraining"] = True
        request["StoppingCondition"]["MaxWaitTimeInSeconds"] = max(
            settings.spot_max_wait_seconds, settings.max_runtime_seconds
        )
        request["CheckpointConfig"] = {"S3Uri": checkpoint_uri, "LocalPath": "/opt/ml/checkpoints"}
    return request


def model_artifact_uri(request: Mapping[str, Any]) -> str:
    """Where SageMaker puts a training job's model.tar.gz."""
    base = request["OutputDataConfig"]["S3OutputPath"].rstrip("/")
    return f"{base}/{request['TrainingJobName']}/output/model.tar.gz"


def output_data_uri(request: Mapping[str, Any]) -> str:
    """Where SageMaker puts a training job's output.tar.gz (SM_OUTPUT_DATA_DIR)."""
    base = request["OutputDataConfig"]["S3OutputPath"].rstrip("/")
    return f"{base}/{request['TrainingJobName']}/output/output.tar.gz"


def instance_count(request: Mapping[str, Any]) -> int:
    """How many instances a CreateProcessingJob / CreateTrainingJob body asks for."""
    cluster = request.get("ProcessingResources", {}).get("ClusterConfig") or request.get(
        "ResourceConfig", {}
    )
    return int(cluster.get("InstanceCount", 1))
