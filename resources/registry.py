"""The model registry: where a model version's approval status lives and who may change it.

Two implementations behind one interface, chosen per environment in
``forecast_assets/definitions.py``:

- :class:`LocalModelRegistry`: the database's ``model_versions`` table is the registry. Versions
  are registered there and decisions are written there; nothing else can decide.
- :class:`SageMakerModelRegistry`: the same table, and every version is also a model package in
  the SageMaker Model Registry, in one model package group per customer
  (:func:`package_group_name`). Decisions made in Dagster update the package
  (UpdateModelPackage); :meth:`ModelRegistry.pull_decisions`, which ``model_registry_sensor``
  calls, registers versions that have no package yet (training writes the table only, so an
  outage of the Model Registry never fails a training step) and takes over decisions made in
  SageMaker (console, Studio, another tool).

The table stays what forecasting reads (``choose_model``), in both environments, so a forecast
never waits on a SageMaker call. Every request body is checked against botocore's service model
before it is sent, as the job requests are (``resources.jobs.validation``).
"""

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import boto3
import dagster as dg
from botocore.exceptions import ClientError
from pydantic import Field

from resources.database import ApprovalStatus, Database, ModelVersion, check_decision
from resources.jobs import validation

# botocore's service model, ModelPackageGroupName of CreateModelPackageGroup (EntityName):
# 1-63 characters, letters, digits and hyphens, starting and ending with a letter or digit.
GROUP_NAME_PATTERN = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")
MAX_GROUP_NAME_LENGTH = 63
DEFAULT_GROUP_PREFIX = "forecast"
MAX_GROUP_PREFIX_LENGTH = 20
# Customer ids that can appear in a group name as they are. Lower case only: a second customer
# "Acme" must not land in the group of "acme" should SageMaker compare names without case.
_PLAIN_ID = re.compile(r"[a-z0-9](-*[a-z0-9])*")
_DIGEST_CHARS = 16
# CustomerMetadataProperties values (botocore's model: 1-256 letters, separators, numbers and
# _.:/=+-@); a value that is not one (a long S3 URI) is left out, not sent to be refused.
_METADATA_VALUE = re.compile(r"[\w\s.:/=+\-@]{1,256}")
# ApprovalDescription and ModelPackageDescription: at most 1024 characters.
MAX_DESCRIPTION = 1024
PACKAGES_PAGE_SIZE = 100


def package_group_name(customer_id: str, prefix: str = DEFAULT_GROUP_PREFIX) -> str:
    """The customer's model package group: ``<prefix>-<customer id>`` when the id is lowercase
    letters, digits and hyphens and fits, else ``<prefix>--<readable part>-<sha256 digest>``.

    Collision-free: plain names are ``prefix`` and a hyphen followed by a letter or digit, never
    by a second hyphen, so no plain name equals a digest name; two plain names differ as their
    ids do; two digest names differ unless 64 bits of SHA-256 of two different ids collide.
    """
    if not GROUP_NAME_PATTERN.fullmatch(prefix) or len(prefix) > MAX_GROUP_PREFIX_LENGTH:
        raise ValueError(
            f"model package group prefix {prefix!r} must be 1-{MAX_GROUP_PREFIX_LENGTH} letters, "
            "digits and hyphens, starting and ending with a letter or digit"
        )
    plain = f"{prefix}-{customer_id}"
    if _PLAIN_ID.fullmatch(customer_id) and len(plain) <= MAX_GROUP_NAME_LENGTH:
        return plain
    digest = hashlib.sha256(customer_id.encode("utf-8")).hexdigest()[:_DIGEST_CHARS]
    head = f"{prefix}--"
    room = MAX_GROUP_NAME_LENGTH - len(head) - 1 - len(digest)
    readable = re.sub(r"[^a-z0-9]+", "-", customer_id.lower()).strip("-")[:room].strip("-")
    return f"{head}{readable}-{digest}" if readable else f"{head}{digest}"


class RegistryRequestError(dg.Failure):
    """SageMaker would refuse a model registry request; nothing was sent."""

    def __init__(self, operation: str, what: str, problems: Sequence[str]):
        self.operation, self.what, self.problems = operation, what, list(problems)
        super().__init__(
            description=f"SageMaker would refuse {operation} for {what}, so it was not sent:\n"
            + "\n".join(f"- {p}" for p in self.problems),
            allow_retries=False,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.operation, self.what, self.problems)


class RegistryCallError(dg.Failure):
    """SageMaker refused or failed a model registry call; the description names the version."""


def registry_request_problems(operation: str, body: Mapping[str, Any]) -> list[str]:
    """Every reason SageMaker would refuse ``body`` for ``operation``: botocore's own checks
    (types, required and unknown members) and every length, pattern, enum and range of the
    service model, walked as ``resources.jobs.validation`` walks the job requests."""
    from botocore.validate import ParamValidator

    shape = validation._service_model().operation_model(operation).input_shape
    report = ParamValidator().validate(dict(body), shape)
    problems = [line for line in report.generate_report().splitlines() if line]
    # model_findings is typed for the two job operations but walks any operation's shape.
    problems += [str(f) for f in validation.model_findings(operation, body)]  # type: ignore[arg-type]
    return problems


def checked(operation: str, body: dict[str, Any], what: str) -> dict[str, Any]:
    """``body``, if SageMaker would accept it for ``operation``; else RegistryRequestError."""
    problems = registry_request_problems(operation, body)
    if problems:
        raise RegistryRequestError(operation, what, problems)
    return body


def _text(value: str, most: int = MAX_DESCRIPTION) -> str:
    # The description patterns allow letters, marks, separators, symbols, numbers and
    # punctuation: no control characters such as line breaks.
    flat = " ".join(value.split())
    return flat if len(flat) <= most else flat[: most - 1] + "…"


def _client_token(customer_id: str, version: str) -> str:
    """CreateModelPackage's idempotency token: a retried registration of the same version
    (a retried step, a re-run after a crash) gets the same package instead of a second one."""
    return hashlib.sha256(f"{customer_id}\0{version}".encode()).hexdigest()[:32]


def create_package_group_request(customer_id: str, group: str) -> dict[str, Any]:
    return {
        "ModelPackageGroupName": group,
        "ModelPackageGroupDescription": _text(
            f"Load forecast models of customer '{customer_id}', registered by forecast_assets."
        ),
    }


def create_package_request(model: ModelVersion, group: str) -> dict[str, Any]:
    """A version as a model package in its customer's group, with its current status.

    No InferenceSpecification: it is optional for versioned packages and these models are not
    deployed to SageMaker endpoints (the inference job loads them). The artifact, the metrics
    that gated it and the Dagster run that made it are the package's metadata.
    """
    metrics = model.metrics
    ratio = metrics.get("wape_ratio")
    gate = (metrics.get("gate") or {}).get("summary") or "; ".join(model.gate_reasons) or "passed"
    properties = {
        "customer_id": model.customer_id,
        "model_version": model.version,
        "model_uri": model.model_uri,
        "model_kind": str(metrics.get("model_kind", "forest")),
        "gate_passed": str(model.gate_passed).lower(),
        "data_version": str(metrics.get("data_version", "")),
        "wape_ratio_to_seasonal_naive": f"{ratio:.4f}" if isinstance(ratio, int | float) else "",
    }
    shown_ratio = (
        f", backtest WAPE {ratio:.3f} x seasonal naive's" if isinstance(ratio, int | float) else ""
    )
    return {
        "ModelPackageGroupName": group,
        # The artifact is named here in full: a metadata value holds at most 256 characters.
        "ModelPackageDescription": _text(
            f"customer '{model.customer_id}', model {model.version}{shown_ratio}. Gate: {gate}. "
            f"Artifact: {model.model_uri}"
        ),
        "ModelApprovalStatus": model.status,
        "CustomerMetadataProperties": {
            k: v for k, v in properties.items() if _METADATA_VALUE.fullmatch(v)
        },
        "ClientToken": _client_token(model.customer_id, model.version),
    }


def update_package_request(arn: str, status: ApprovalStatus, description: str) -> dict[str, Any]:
    return {
        "ModelPackageArn": arn,
        "ModelApprovalStatus": status,
        "ApprovalDescription": _text(description),
    }


@dataclass(frozen=True)
class RegistryChange:
    """What :meth:`ModelRegistry.pull_decisions` changed for one version, in one line."""

    customer_id: str
    version: str
    kind: str  # "pulled", "refused" (approved in SageMaker though gate-failed), "registered"
    line: str


class ModelRegistry(dg.ConfigurableResource, ABC):
    """Registers model versions and records decisions on them (Approved, Rejected,
    PendingManualApproval), with who decided and why. ``database`` holds what forecasting reads."""

    database: dg.ResourceDependency[Database]

    @property
    @abstractmethod
    def where(self) -> str:
        """Where decisions are kept, for messages ("the database", "... and SageMaker ...")."""

    def register(self, **model: Any) -> ModelVersion:
        """Record a trained version (arguments of :meth:`Database.register_model`)."""
        return self.database.register_model(**model)

    def decide(
        self,
        customer_id: str,
        version: str,
        status: ApprovalStatus,
        *,
        decided_by: str,
        reason: str,
    ) -> ModelVersion:
        """Record a decision (the rules a person's decision follows are
        ``forecast_assets.approval``'s); raises KeyError / ValueError as
        :meth:`Database.set_model_status` does."""
        return self.database.set_model_status(
            customer_id, version, status, decided_by=decided_by, reason=reason
        )

    @abstractmethod
    def pull_decisions(self, customer_ids: Sequence[str]) -> list[RegistryChange]:
        """Bring decisions made outside Dagster into the database, for these customers."""


class LocalModelRegistry(ModelRegistry):
    """The database is the model registry: versions and decisions live only in
    ``model_versions``, and Dagster (the approval job, ``forecast-models``) is the only place
    that decides."""

    @property
    def where(self) -> str:
        return "the database"

    def pull_decisions(self, customer_ids: Sequence[str]) -> list[RegistryChange]:
        # No other place can decide, so there is never anything to pull.
        return []


class SageMakerModelRegistry(ModelRegistry):
    """The database, and the SageMaker Model Registry: one model package group per customer
    (``<group_prefix>-<customer>``), one model package per version, ``ModelApprovalStatus``
    kept in step both ways.

    :meth:`register` records a version in both; :meth:`pull_decisions` registers the versions
    the training step recorded in the database only, and takes over decisions made in
    SageMaker. A decision in Dagster updates the package first, then the database (so a refused
    update changes nothing).
    ``endpoint_url`` is for an AWS emulator and is empty in production.
    """

    region_name: str
    endpoint_url: str = ""
    group_prefix: str = Field(
        default=DEFAULT_GROUP_PREFIX,
        description="Start of every model package group name (one per customer).",
    )

    @property
    def where(self) -> str:
        return f"the database and the SageMaker Model Registry ({self.region_name})"

    @cached_property
    def client(self) -> Any:
        from resources.jobs.sagemaker import BOTO_CONFIG

        kwargs: dict[str, Any] = {"region_name": self.region_name, "config": BOTO_CONFIG}
        if self.endpoint_url:
            kwargs["endpoint_url"] = self.endpoint_url
        return boto3.client("sagemaker", **kwargs)

    def group_name(self, customer_id: str) -> str:
        return package_group_name(customer_id, self.group_prefix)

    def register(self, **model: Any) -> ModelVersion:
        return self._ensure_package(self.database.register_model(**model))

    def decide(
        self,
        customer_id: str,
        version: str,
        status: ApprovalStatus,
        *,
        decided_by: str,
        reason: str,
    ) -> ModelVersion:
        model = self.database.model_version(customer_id, version)
        # Checked before SageMaker is asked, so a refused decision changes nothing there either.
        check_decision(customer_id, version, None if model is None else model.gate_passed, status)
        assert model is not None
        model = self._ensure_package(model)
        body = update_package_request(
            model.registry_arn, status, f"{reason} (decided by {decided_by} in forecast_assets)"
        )
        self._call("UpdateModelPackage", body, model)
        return self.database.set_model_status(
            customer_id, version, status, decided_by=decided_by, reason=reason
        )

    def pull_decisions(self, customer_ids: Sequence[str]) -> list[RegistryChange]:
        """For each customer: register versions that have no package yet, and take over every
        status a package has that the database does not (a decision made in SageMaker, or one
        whose database write failed after the package was updated). A gate-failed version
        approved in SageMaker is set back to Rejected there, as Dagster would refuse it."""
        changes: list[RegistryChange] = []
        for customer in customer_ids:
            versions = self.database.model_versions(customer)
            if not versions:
                continue
            packages = self._packages(customer)
            for model in versions:
                if not model.registry_arn:
                    model = self._ensure_package(model)
                    changes.append(
                        RegistryChange(
                            customer,
                            model.version,
                            "registered",
                            f"customer '{customer}': model {model.version} registered in "
                            f"SageMaker as {model.registry_arn} ({model.status})",
                        )
                    )
                    continue
                remote = packages.get(model.registry_arn)
                if remote is None or remote == model.status:
                    continue
                changes.append(self._pull(model, remote))
        return changes

    # SageMaker calls ----------------------------------------------------------------------

    def _call(self, operation: str, body: dict[str, Any], model: ModelVersion | None = None) -> Any:
        what = (
            f"customer '{model.customer_id}', model {model.version}"
            if model is not None
            else str(body.get("ModelPackageGroupName", "the model registry"))
        )
        checked(operation, body, what)
        method = getattr(self.client, re.sub(r"(?<!^)(?=[A-Z])", "_", operation).lower())
        try:
            return method(**body)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise RegistryCallError(
                description=f"{what}: SageMaker refused {operation}: "
                f"{error.get('Code', 'error')}: {error.get('Message', exc)}"
            ) from exc

    def _ensure_group(self, customer_id: str) -> str:
        group = self.group_name(customer_id)
        try:
            self.client.describe_model_package_group(ModelPackageGroupName=group)
            return group
        except ClientError as exc:
            # A missing group is a ValidationException ("ModelPackageGroup <arn> does not
            # exist."); ResourceNotFound is accepted too. Anything else is a real error.
            error = exc.response.get("Error", {})
            missing = error.get("Code") == "ResourceNotFound" or "does not exist" in str(
                error.get("Message", "")
            )
            if not missing:
                raise RegistryCallError(
                    description=f"customer '{customer_id}': SageMaker refused "
                    f"DescribeModelPackageGroup for {group}: {exc}"
                ) from exc
        try:
            self._call("CreateModelPackageGroup", create_package_group_request(customer_id, group))
        except RegistryCallError as exc:
            # Created meanwhile by another run of the same customer: that group is ours too.
            if "already exists" not in str(exc.description):
                raise
        return group

    def _ensure_package(self, model: ModelVersion) -> ModelVersion:
        """The version with its package ARN, creating the package (and group) if it has none."""
        if model.registry_arn:
            return model
        group = self._ensure_group(model.customer_id)
        response = self._call("CreateModelPackage", create_package_request(model, group), model)
        arn = response["ModelPackageArn"]
        self.database.set_registry_arn(model.customer_id, model.version, arn)
        return ModelVersion(**{**model.__dict__, "registry_arn": arn})

    def _packages(self, customer_id: str) -> dict[str, str]:
        """Every package of the customer's group: ARN -> ModelApprovalStatus."""
        found: dict[str, str] = {}
        body: dict[str, Any] = {
            "ModelPackageGroupName": self.group_name(customer_id),
            "ModelPackageType": "Versioned",
            "MaxResults": PACKAGES_PAGE_SIZE,
        }
        while True:
            page = self._call("ListModelPackages", body)
            for summary in page.get("ModelPackageSummaryList", []):
                found[summary["ModelPackageArn"]] = summary.get("ModelApprovalStatus", "")
            token = page.get("NextToken")
            if not token:
                return found
            body = {**body, "NextToken": token}

    def _pull(self, model: ModelVersion, remote: str) -> RegistryChange:
        package = self._call(
            "DescribeModelPackage", {"ModelPackageName": model.registry_arn}, model
        )
        who = "sagemaker:" + _identity(package.get("LastModifiedBy") or {})
        why = package.get("ApprovalDescription") or "no approval description given in SageMaker"
        customer, version = model.customer_id, model.version
        if remote == "Approved" and not model.gate_passed:
            reasons = "; ".join(model.gate_reasons) or "failed its quality gate"
            body = update_package_request(
                model.registry_arn,
                model.status if model.status != "Approved" else "Rejected",  # type: ignore[arg-type]
                f"cannot be approved: it failed its quality gate ({reasons}); "
                f"set back by forecast_assets after {who} approved it",
            )
            self._call("UpdateModelPackage", body, model)
            return RegistryChange(
                customer,
                version,
                "refused",
                f"customer '{customer}': model {version} was approved in SageMaker by {who}, but "
                f"it failed its quality gate ({reasons}); set back to {body['ModelApprovalStatus']} "
                "there",
            )
        status: ApprovalStatus = remote  # type: ignore[assignment]
        self.database.set_model_status(customer, version, status, decided_by=who, reason=why)
        return RegistryChange(
            customer,
            version,
            "pulled",
            f"customer '{customer}': model {version} {model.status} -> {status}, decided in "
            f"SageMaker by {who}: {why}",
        )


def _identity(user: Mapping[str, Any]) -> str:
    """Who a SageMaker UserContext names: the Studio user profile, else the IAM identity."""
    iam = user.get("IamIdentity") or {}
    return str(user.get("UserProfileName") or iam.get("Arn") or iam.get("PrincipalId") or "unknown")
