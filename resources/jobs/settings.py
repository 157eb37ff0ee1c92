"""Compute settings for each job, with the defaults the replaced workflows used.

Each field is checked when its value is known: for the ``sagemaker`` environment that is when a
run starts and Dagster resolves the ``dg.EnvVar`` values (never when definitions load), so a
setting SageMaker would refuse fails the run before any job, naming the variable. What can only
be judged in a whole request (lengths of URIs, the instance type for the kind of job, ...) is
checked by ``resources.jobs.validation`` right before each Create call.
"""

import re
import unicodedata
from typing import Any, Literal

import dagster as dg
from pydantic import ValidationInfo, field_validator, model_validator

JobName = Literal["preprocessing", "training", "inference"]
JOB_NAMES: tuple[JobName, ...] = ("preprocessing", "training", "inference")

# Upper bounds of StoppingCondition.MaxRuntimeInSeconds (and training's MaxWaitTimeInSeconds):
# the service model's maximum for processing, the documented 28 days for training.
MAX_RUNTIME_SECONDS = {"processing": 777_600, "training": 2_419_200}

# Stands in for an execution role where none is needed (the local launcher never assumes it).
LOCAL_ROLE_ARN = "arn:aws:iam::000000000000:role/forecast-assets-local"

# AWS tag rules (SageMaker's Tag shape, and "Tagging your AWS resources" in the AWS General
# Reference): at most 50 tags per resource, unique keys of 1-128 and values of 0-256 Unicode
# letters, digits, white space and `_ . : / = + - @`, and no `aws:` prefix, in any case, on keys
# or values (reserved for AWS).
MAX_TAGS = 50
MAX_TAG_KEY_LENGTH = 128
MAX_TAG_VALUE_LENGTH = 256
TAG_SYMBOLS = frozenset("_.:/=+-@")
# Tags every job carries whatever the settings: the step's own (forecast_assets.assets.common's
# job_tags) and those the Pipes client adds (Dagster's run execution info, the asset). Their
# namespaces are ours: a FORECAST_TAGS key in them would be overwritten without a word.
JOB_OWN_TAG_KEYS = (
    "dagster/run-id",
    "dagster/job",
    "dagster/asset",
    "dagster/partition",
    "dagster/code-location",
    "dagster/user",
    "dagster/deployment-name",
    "dagster/git-repo",
    "dagster/git-branch",
    "dagster/git-sha",
    "forecast-assets/customer",
    "forecast-assets/customers",
)
RESERVED_TAG_PREFIXES = ("dagster/", "forecast-assets/")
MAX_DEPLOYMENT_TAGS = MAX_TAGS - len(JOB_OWN_TAG_KEYS)

# KMS key id (a UUID, or mrk-<32 hex> for a multi-Region key) or key ARN. An alias works for
# outputs but not for VolumeKmsKeyId, which takes "a KMS key ID or the ARN of a KMS key"
# (ResourceConfig.VolumeKmsKeyId in the SageMaker API reference), so aliases are refused.
_KMS_KEY_ID = r"(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32})"
KMS_KEY = re.compile(rf"{_KMS_KEY_ID}|arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{{12}}:key/{_KMS_KEY_ID}")
# VpcConfig: 1-16 subnets and 1-5 security groups, each id [-0-9a-zA-Z]{1,32}.
VPC_ID = re.compile(r"[-0-9a-zA-Z]{1,32}")
MAX_SUBNETS = 16
MAX_SECURITY_GROUPS = 5

# dg.EnvVar values before they are resolved: validators see these when definitions load.
_UNRESOLVED = (dg.EnvVar, type(dg.EnvVar.int("FORECAST_UNRESOLVED")))


def _unresolved(value: Any) -> bool:
    return isinstance(value, _UNRESOLVED)


def _split(value: str) -> list[str]:
    return [s.strip() for s in value.split(",") if s.strip()]


def tag_text_problem(what: str, text: str, limit: int) -> str | None:
    """Why ``text`` cannot be a tag key or value (``what``), or None."""
    if len(text) > limit:
        return f"{what} {text[:40]!r}… is {len(text)} characters, the limit is {limit}"
    bad = sorted(
        {c for c in text if c not in TAG_SYMBOLS and unicodedata.category(c)[0] not in "LNZ"}
    )
    if bad:
        return (
            f"{what} {text!r} holds {''.join(bad)!r}: tags take only letters, digits, spaces "
            "and _ . : / = + - @"
        )
    if text.lower().startswith("aws:"):
        return f"{what} {text!r} starts with 'aws:', which AWS reserves for its own tags"
    return None


def parse_tags(value: str) -> dict[str, str]:
    """``key=value,key=value`` as a dict; raises ValueError naming FORECAST_TAGS.

    Every rule is checked, and all problems are reported at once.
    """
    tags: dict[str, str] = {}
    problems: list[str] = []
    for pair in _split(value):
        key, sep, tag_value = pair.partition("=")
        key, tag_value = key.strip(), tag_value.strip()
        if not sep or not key:
            problems.append(f"tag {pair!r} is not key=value")
            continue
        if key in tags:
            problems.append(f"tag key {key!r} is given twice")
        if key.startswith(RESERVED_TAG_PREFIXES):
            problems.append(
                f"tag key {key!r} is in a namespace forecast_assets sets on every job "
                f"({', '.join(RESERVED_TAG_PREFIXES)})"
            )
        for problem in (
            tag_text_problem("tag key", key, MAX_TAG_KEY_LENGTH),
            tag_text_problem(f"the value of tag {key!r}", tag_value, MAX_TAG_VALUE_LENGTH),
        ):
            if problem:
                problems.append(problem)
        tags[key] = tag_value
    if len(tags) > MAX_DEPLOYMENT_TAGS:
        problems.append(
            f"{len(tags)} tags, but a SageMaker job takes at most {MAX_TAGS} and every job "
            f"carries up to {len(JOB_OWN_TAG_KEYS)} of its own: at most {MAX_DEPLOYMENT_TAGS} "
            f"(remove {len(tags) - MAX_DEPLOYMENT_TAGS})"
        )
    if problems:
        raise ValueError("FORECAST_TAGS (launcher.platform.tags): " + "; ".join(problems))
    return tags


def kms_key_problem(value: str) -> str | None:
    """Why ``value`` cannot encrypt a job's volume and outputs, or None (empty is fine)."""
    if not value or KMS_KEY.fullmatch(value):
        return None
    if "alias/" in value:
        return (
            f"{value!r} is a key alias: SageMaker takes only a key id or key ARN for a job's "
            "volume (VolumeKmsKeyId); use the key's id or ARN"
        )
    return (
        f"{value!r} is neither a KMS key id (1234abcd-12ab-34cd-56ef-1234567890ab) nor a key ARN "
        "(arn:aws:kms:<region>:<account>:key/<key id>)"
    )


class JobSettings(dg.Config):
    """What one kind of job runs on. Every field maps onto the SageMaker request."""

    image_uri: str
    """Empty on SageMaker means the prebuilt SageMaker scikit-learn image of the region."""
    instance_type: str = "ml.m5.large"
    instance_count: int = 1
    volume_size_gb: int = 30
    max_runtime_seconds: int = 3600
    spot_max_wait_seconds: int = 0
    """Training only: above 0, managed spot training that may wait this long in all (at least
    max_runtime_seconds). The script writes no checkpoints: an interrupted job starts over."""

    # Bounds every kind of job shares (ImageUri / TrainingImage take 255 characters); those that
    # differ between processing and training are checked on the request.
    @field_validator("image_uri", mode="before")
    @classmethod
    def _image_uri(cls, value: Any) -> Any:
        if isinstance(value, str) and not _unresolved(value) and len(value) > 255:
            raise ValueError(
                f"FORECAST_<JOB>_IMAGE_URI is {len(value)} characters, SageMaker takes 255"
            )
        return value

    @field_validator("instance_type", mode="before")
    @classmethod
    def _instance_type(cls, value: Any) -> Any:
        if isinstance(value, str) and not _unresolved(value) and not value.startswith("ml."):
            raise ValueError(
                f"FORECAST_<JOB>_INSTANCE_TYPE is {value!r}: SageMaker instance types start "
                "with 'ml.' (e.g. ml.m5.large)"
            )
        return value

    @field_validator(
        "instance_count",
        "volume_size_gb",
        "max_runtime_seconds",
        "spot_max_wait_seconds",
        mode="before",
    )
    @classmethod
    def _counts(cls, value: Any, info: ValidationInfo) -> Any:
        if _unresolved(value) or not isinstance(value, int):
            return value  # unresolved, or a type error pydantic reports itself
        variable = {
            "instance_count": "FORECAST_<JOB>_INSTANCE_COUNT",
            "volume_size_gb": "FORECAST_<JOB>_VOLUME_SIZE_GB",
            "max_runtime_seconds": "FORECAST_<JOB>_MAX_RUNTIME_SECONDS",
            "spot_max_wait_seconds": "FORECAST_TRAINING_SPOT_MAX_WAIT_SECONDS",
        }[str(info.field_name)]
        low = 0 if info.field_name == "spot_max_wait_seconds" else 1
        high = MAX_RUNTIME_SECONDS["training"] if "seconds" in str(info.field_name) else None
        if value < low or (high is not None and value > high):
            bounds = f"{low}-{high}" if high is not None else f"at least {low}"
            raise ValueError(f"{variable} is {value}, SageMaker takes {bounds}")
        return value

    def for_batch(self, customers: int, job: "JobName") -> "JobSettings":
        """The settings for one job that processes ``customers`` customers.

        A job never asks for more instances than it has customers (one customer runs on one
        instance, whatever ``instance_count`` says): its hosts split the customers, each taking
        every n-th (``forecast_core.batch``). The time limits are per customer, so a job gets
        that many times each as its busiest host has customers, up to what SageMaker accepts for
        the kind of job.
        """
        instances = max(1, min(self.instance_count, customers))
        per_host = -(-max(customers, 1) // instances)
        update: dict[str, Any] = {"instance_count": instances}
        if per_host > 1:
            cap = MAX_RUNTIME_SECONDS["training" if job == "training" else "processing"]
            update["max_runtime_seconds"] = min(self.max_runtime_seconds * per_host, cap)
            update["spot_max_wait_seconds"] = min(self.spot_max_wait_seconds * per_host, cap)
        if all(getattr(self, k) == v for k, v in update.items()):
            return self
        return self.model_copy(update=update)


class PlatformSettings(dg.Config):
    """Settings every job of the deployment shares."""

    kms_key_id: str = ""
    """KMS key id or key ARN (not an alias) for job volumes and outputs; empty uses SageMaker's
    default encryption. Not usable with instance types that have local NVMe storage."""
    subnets: str = ""
    """Comma-separated VPC subnet ids (at most 16); empty runs jobs outside a VPC."""
    security_group_ids: str = ""
    """Comma-separated security group ids (1-5, with subnets)."""
    tags: str = ""
    """Tags for every job, as ``key=value,key=value`` (at most 38: every job carries 12 more)."""

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, value: Any) -> Any:
        if isinstance(value, str) and not _unresolved(value):
            parse_tags(value)
        return value

    @field_validator("kms_key_id", mode="before")
    @classmethod
    def _kms_key_id(cls, value: Any) -> Any:
        if (
            isinstance(value, str)
            and not _unresolved(value)
            and (problem := kms_key_problem(value))
        ):
            raise ValueError(f"FORECAST_KMS_KEY_ID (launcher.platform.kms_key_id): {problem}")
        return value

    @field_validator("subnets", "security_group_ids", mode="before")
    @classmethod
    def _vpc_ids(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, str) or _unresolved(value):
            return value
        variable, most = {
            "subnets": ("FORECAST_SUBNETS", MAX_SUBNETS),
            "security_group_ids": ("FORECAST_SECURITY_GROUP_IDS", MAX_SECURITY_GROUPS),
        }[str(info.field_name)]
        ids = _split(value)
        problems = [
            f"{i!r} is not an id ([-0-9a-zA-Z], 1-32)" for i in ids if not VPC_ID.fullmatch(i)
        ]
        if len(ids) > most:
            problems.append(f"{len(ids)} ids, SageMaker takes at most {most}")
        if problems:
            raise ValueError(
                f"{variable} (launcher.platform.{info.field_name}): " + "; ".join(problems)
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _vpc_needs_both(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        subnets, groups = data.get("subnets", ""), data.get("security_group_ids", "")
        if not all(isinstance(v, str) and not _unresolved(v) for v in (subnets, groups)):
            return data  # unresolved until a run starts
        if bool(_split(subnets)) != bool(_split(groups)):
            given, missing = (
                ("FORECAST_SUBNETS", "FORECAST_SECURITY_GROUP_IDS")
                if _split(subnets)
                else ("FORECAST_SECURITY_GROUP_IDS", "FORECAST_SUBNETS")
            )
            raise ValueError(
                f"{given} is set but {missing} is empty: a VPC needs both subnets and security "
                "groups (or neither, to run outside a VPC)"
            )
        return data

    def subnet_list(self) -> list[str]:
        return _split(self.subnets)

    def security_group_list(self) -> list[str]:
        return _split(self.security_group_ids)

    def tag_map(self) -> dict[str, str]:
        return parse_tags(self.tags)


def default_settings(job: JobName) -> JobSettings:
    # Weekly training was capped at 30 minutes and daily inference at 20 in the workflows this
    # replaces; preprocessing had an hour on a 20 GB volume.
    if job == "preprocessing":
        return JobSettings(
            image_uri="forecast-assets/preprocessing:local",
            instance_type="ml.m5.xlarge",
            volume_size_gb=20,
            max_runtime_seconds=3600,
        )
    if job == "training":
        return JobSettings(image_uri="forecast-assets/training:local", max_runtime_seconds=1800)
    return JobSettings(image_uri="forecast-assets/inference:local", max_runtime_seconds=1200)
