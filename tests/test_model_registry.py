"""The SageMaker Model Registry side of the model registry, against a moto server: a model package
group per customer, a package per version, ModelApprovalStatus kept in step both ways, every
request body checked against botocore's service model, and the IAM policy it needs."""

import hashlib
import json
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import pytest

from forecast_assets.approval import ApprovalError, decide, model_registry_sensor
from resources.database import Database, ModelVersion
from resources.registry import (
    GROUP_NAME_PATTERN,
    LocalModelRegistry,
    RegistryRequestError,
    SageMakerModelRegistry,
    create_package_group_request,
    create_package_request,
    package_group_name,
    registry_request_problems,
    update_package_request,
)
from tests.conftest import TEST_REGION
from tests.test_iam import ACCOUNT_ID, Request, allowing_statements

IAM_POLICY = Path(__file__).resolve().parents[1] / "iam" / "model-registry-policy.json"
CUSTOMER = "hansa-offices"


def _register(
    registry: Any,
    customer: str,
    version: str,
    *,
    passed: bool = True,
    auto: bool = False,
    uri: str | None = None,
) -> ModelVersion:
    return registry.register(
        customer_id=customer,
        version=version,
        model_uri=uri or f"s3://bucket/fa/models/{customer}/{version}/output/model.tar.gz",
        metrics={
            "model_kind": "forest",
            "wape_ratio": 0.82 if passed else 1.3,
            "hyperparameters": {"timezone": "Europe/Berlin", "holiday_country": "DE"},
            "gate": {"summary": "WAPE 8.1% vs seasonal naive 10.1%: approved"},
        },
        gate_passed=passed,
        gate_reasons=[] if passed else ["WAPE 13.0% is not below seasonal naive's 10.0% × 1.00"],
        run_id="run-1",
        auto_approve=auto,
    )


@pytest.fixture
def registry(aws_env, data_home) -> SageMakerModelRegistry:
    return SageMakerModelRegistry(database=Database(), region_name=TEST_REGION)


@pytest.fixture
def sagemaker(aws_env) -> Any:
    """A client of our own, as a person in the SageMaker console would act."""
    return boto3.client("sagemaker", region_name=TEST_REGION)


# Group names -----------------------------------------------------------------------------------


ODD_IDS = [
    "acme",
    "Acme",
    "ACME",
    "acme-",
    "-acme",
    "acme--1",
    "acme_1",
    "acme 1",
    "acme.1",
    "müller-bäckerei",
    "x" * 32,
    "y" * 200,
    "a/b",
    "a\\b",
    "",
    "  ",
    "---",
    "forecast-acme",
    "-" + "z" * 70,
]


def test_group_names_are_valid_and_distinct_for_any_customer_id():
    names = {customer: package_group_name(customer) for customer in ODD_IDS}
    for customer, name in names.items():
        body = create_package_group_request(customer, name)
        assert registry_request_problems("CreateModelPackageGroup", body) == [], customer
        assert GROUP_NAME_PATTERN.fullmatch(name) and len(name) <= 63, (customer, name)
    # Collision-free, also between ids that differ only in case or in characters dropped.
    assert len(set(names.values())) == len(ODD_IDS)
    assert len({n.lower() for n in names.values()}) == len(ODD_IDS)
    # Valid customer ids stay readable; others carry a digest of the exact id.
    assert names["acme"] == "forecast-acme"
    assert names["forecast-acme"] == "forecast-forecast-acme"
    digest = hashlib.sha256(b"Acme").hexdigest()[:16]
    assert names["Acme"] == f"forecast--acme-{digest}"
    assert names["y" * 200].endswith(hashlib.sha256(b"y" * 200).hexdigest()[:16])


def test_group_prefix_must_itself_be_valid():
    assert package_group_name("acme", "Energy-Team1") == "Energy-Team1-acme"
    for bad in ("", "-x", "x-", "a_b", "p" * 21):
        with pytest.raises(ValueError, match="model package group prefix"):
            package_group_name("acme", bad)


# Request bodies against botocore's service model -----------------------------------------------


def test_request_bodies_pass_the_service_model_with_worst_case_values():
    long_id = "c" * 32
    version = "fa-train-" + "v" * 54  # a job name: at most 63 characters
    uri = f"s3://{'b' * 63}/{'p' * 95}/models/{long_id}/{version}/output/model.tar.gz"
    model = ModelVersion(
        customer_id=long_id,
        version=version,
        model_uri=uri,
        metrics={"wape_ratio": 0.5, "model_kind": "naive_week", "gate": {"summary": "é" * 2000}},
        gate_passed=True,
        gate_reasons=[],
        status="PendingManualApproval",
        created_at=None,  # type: ignore[arg-type]
    )
    group = package_group_name(long_id)
    package = create_package_request(model, group)
    assert registry_request_problems("CreateModelPackage", package) == []
    # The URI is too long for a metadata value: it is left out there, and named in the
    # description instead, which stays within its 1024 characters.
    assert "model_uri" not in package["CustomerMetadataProperties"]
    assert len(package["ModelPackageDescription"]) == 1024
    arn = f"arn:aws:sagemaker:{TEST_REGION}:{ACCOUNT_ID}:model-package/{group}/12"
    update = update_package_request(arn, "Rejected", "line one\nline two " + "w" * 3000)
    assert registry_request_problems("UpdateModelPackage", update) == []
    assert "\n" not in update["ApprovalDescription"]


def test_the_check_finds_what_sagemaker_would_refuse():
    problems = registry_request_problems(
        "CreateModelPackage",
        {
            "ModelPackageGroupName": "bad_name",
            "ModelApprovalStatus": "Maybe",
            "ClientToken": "x" * 40,
            "Unknown": 1,
        },
    )
    text = "\n".join(problems)
    assert "Unknown parameter" in text and "Unknown" in text
    assert "ModelApprovalStatus is 'Maybe', not one of the 3 values" in text
    assert "ModelPackageGroupName is 'bad_name', which does not match" in text
    assert "ClientToken is 40 characters long, the limit is 36" in text


def test_a_refused_request_is_never_sent(registry, sagemaker):
    model = _register(LocalModelRegistry(database=registry.database), CUSTOMER, "v1")
    calls: list[str] = []
    registry.client.meta.events.register(
        "before-call.sagemaker", lambda model, **_: calls.append(model.name)
    )
    broken = ModelVersion(**{**model.__dict__, "status": "Maybe"})
    with pytest.raises(RegistryRequestError, match="ModelApprovalStatus is 'Maybe'"):
        registry._ensure_package(broken)
    assert "CreateModelPackage" not in calls


# Kept in step both ways ------------------------------------------------------------------------


def test_a_registered_version_is_a_package_in_its_customers_group(registry, sagemaker):
    first = _register(registry, CUSTOMER, "fa-train-hansa-offices-1", auto=True)
    second = _register(registry, CUSTOMER, "fa-train-hansa-offices-2", passed=False)
    third = _register(registry, CUSTOMER, "fa-train-hansa-offices-3")
    group = sagemaker.describe_model_package_group(ModelPackageGroupName="forecast-hansa-offices")
    assert group["ModelPackageGroupName"] == "forecast-hansa-offices"
    packages = sagemaker.list_model_packages(ModelPackageGroupName="forecast-hansa-offices")[
        "ModelPackageSummaryList"
    ]
    by_arn = {p["ModelPackageArn"]: p["ModelApprovalStatus"] for p in packages}
    assert by_arn == {
        first.registry_arn: "Approved",
        second.registry_arn: "Rejected",
        third.registry_arn: "PendingManualApproval",
    }
    described = sagemaker.describe_model_package(ModelPackageName=third.registry_arn)
    assert described["CustomerMetadataProperties"]["model_version"] == third.version
    assert described["CustomerMetadataProperties"]["customer_id"] == CUSTOMER
    assert third.model_uri in described["ModelPackageDescription"]
    # The database knows each version's package.
    stored = {m.version: m.registry_arn for m in registry.database.model_versions(CUSTOMER)}
    assert stored == {m.version: m.registry_arn for m in (first, second, third)}


def test_a_decision_in_dagster_updates_the_package(registry, sagemaker):
    pending = _register(registry, CUSTOMER, "v1")
    decision = decide(
        registry, CUSTOMER, "Approved", reason="checked the backtest chart", decided_by="ana"
    )
    assert decision.model.version == "v1" and decision.model.status == "Approved"
    package = sagemaker.describe_model_package(ModelPackageName=pending.registry_arn)
    assert package["ModelApprovalStatus"] == "Approved"
    assert package["ApprovalDescription"].startswith("checked the backtest chart (decided by ana")
    stored = registry.database.model_version(CUSTOMER, "v1")
    assert stored is not None
    assert (stored.status, stored.decided_by, stored.decision_reason) == (
        "Approved",
        "ana",
        "checked the backtest chart",
    )
    # Nothing to pull afterwards: both sides agree.
    assert registry.pull_decisions([CUSTOMER]) == []


def test_a_refused_update_leaves_the_database_as_it_was(registry, sagemaker):
    pending = _register(registry, CUSTOMER, "v1")
    # SageMaker no longer knows the package the database names.
    registry.database.set_registry_arn(CUSTOMER, "v1", pending.registry_arn.replace("/1", "/999"))
    with pytest.raises(dg.Failure, match=r"customer 'hansa-offices', model v1: SageMaker refused"):
        registry.decide(CUSTOMER, "v1", "Approved", decided_by="ana", reason="fine")
    stored = registry.database.model_version(CUSTOMER, "v1")
    assert stored is not None and stored.status == "PendingManualApproval"


def test_a_decision_in_sagemaker_is_pulled_into_the_database(registry, sagemaker):
    approved = _register(registry, CUSTOMER, "v1", auto=True)
    pending = _register(registry, CUSTOMER, "v2")
    sagemaker.update_model_package(
        ModelPackageArn=pending.registry_arn,
        ModelApprovalStatus="Approved",
        ApprovalDescription="approved in Studio after review",
    )
    sagemaker.update_model_package(
        ModelPackageArn=approved.registry_arn,
        ModelApprovalStatus="Rejected",
        ApprovalDescription="drifted",
    )
    changes = registry.pull_decisions([CUSTOMER])
    assert sorted((c.version, c.kind) for c in changes) == [("v1", "pulled"), ("v2", "pulled")]
    stored = {m.version: m for m in registry.database.model_versions(CUSTOMER)}
    assert stored["v2"].status == "Approved"
    assert stored["v2"].decided_by.startswith("sagemaker:")
    assert stored["v2"].decision_reason == "approved in Studio after review"
    assert (stored["v1"].status, stored["v1"].decision_reason) == ("Rejected", "drifted")
    line = next(c.line for c in changes if c.version == "v2")
    assert "customer 'hansa-offices': model v2 PendingManualApproval -> Approved" in line
    assert registry.pull_decisions([CUSTOMER]) == []  # in step now


def test_a_gate_failed_model_approved_in_sagemaker_is_set_back(registry, sagemaker):
    rejected = _register(registry, CUSTOMER, "bad", passed=False)
    sagemaker.update_model_package(
        ModelPackageArn=rejected.registry_arn, ModelApprovalStatus="Approved"
    )
    (change,) = registry.pull_decisions([CUSTOMER])
    assert change.kind == "refused"
    assert "failed its quality gate" in change.line and "set back to Rejected" in change.line
    package = sagemaker.describe_model_package(ModelPackageName=rejected.registry_arn)
    assert package["ModelApprovalStatus"] == "Rejected"
    assert "cannot be approved" in package["ApprovalDescription"]
    stored = registry.database.model_version(CUSTOMER, "bad")
    assert stored is not None and stored.status == "Rejected"


def test_versions_registered_before_the_registry_get_their_packages(registry, sagemaker):
    local = LocalModelRegistry(database=registry.database)
    _register(local, CUSTOMER, "old", auto=True)
    _register(local, "lindenschule", "old")
    changes = registry.pull_decisions([CUSTOMER, "lindenschule"])
    assert sorted((c.customer_id, c.kind) for c in changes) == [
        ("hansa-offices", "registered"),
        ("lindenschule", "registered"),
    ]
    stored = registry.database.model_version("lindenschule", "old")
    assert stored is not None and stored.registry_arn
    package = sagemaker.describe_model_package(ModelPackageName=stored.registry_arn)
    assert package["ModelApprovalStatus"] == "PendingManualApproval"
    assert registry.pull_decisions([CUSTOMER, "lindenschule"]) == []


def test_the_sensor_pulls_a_bounded_number_of_customers_per_tick(registry, sagemaker, monkeypatch):
    import forecast_assets.approval as approval

    monkeypatch.setattr(approval, "MAX_CUSTOMERS_PER_TICK", 2)
    customers = ["c-1", "c-2", "c-3"]
    packages = {c: _register(registry, c, "v1") for c in customers}
    for customer in customers:
        sagemaker.update_model_package(
            ModelPackageArn=packages[customer].registry_arn,
            ModelApprovalStatus="Rejected",
            ApprovalDescription=f"not for {customer}",
        )
    with dg.build_sensor_context(resources={"registry": registry}) as context:
        first = model_registry_sensor(context)
        assert isinstance(first, dg.SkipReason)
        assert "checked 2 of 3 customers" in (first.skip_message or "")
        assert context.cursor == "c-2"
        statuses = {c: registry.database.model_version(c, "v1").status for c in customers}  # type: ignore[union-attr]
        assert statuses == {"c-1": "Rejected", "c-2": "Rejected", "c-3": "PendingManualApproval"}
        second = model_registry_sensor(context)
        assert "c-3" in (second.skip_message or "")  # type: ignore[union-attr]
    assert registry.database.model_version("c-3", "v1").status == "Rejected"  # type: ignore[union-attr]


def test_approving_a_gate_failed_model_never_reaches_sagemaker(registry, sagemaker):
    rejected = _register(registry, CUSTOMER, "bad", passed=False)
    with pytest.raises(ApprovalError, match="failed its quality gate"):
        decide(registry, CUSTOMER, "Approved", version="bad", reason="x", decided_by="ana")
    package = sagemaker.describe_model_package(ModelPackageName=rejected.registry_arn)
    assert package["ModelApprovalStatus"] == "Rejected"


# IAM -------------------------------------------------------------------------------------------


def _iam_requests(operation: str, params: dict[str, Any]) -> list[Request]:
    """What AWS authorizes each model registry call against (SageMaker lowercases names in
    ARNs; ListModelPackages has no resource-level permissions)."""
    base = f"arn:aws:sagemaker:{TEST_REGION}:{ACCOUNT_ID}"
    if operation in ("CreateModelPackageGroup", "DescribeModelPackageGroup"):
        group = params["ModelPackageGroupName"].lower()
        return [Request(f"sagemaker:{operation}", f"{base}:model-package-group/{group}")]
    if operation == "CreateModelPackage":
        group = params["ModelPackageGroupName"].lower()
        return [
            Request(f"sagemaker:{operation}", f"{base}:model-package/{group}/*"),
            Request(f"sagemaker:{operation}", f"{base}:model-package-group/{group}"),
        ]
    if operation in ("UpdateModelPackage", "DescribeModelPackage"):
        arn = params.get("ModelPackageArn") or params["ModelPackageName"]
        return [Request(f"sagemaker:{operation}", arn.lower())]
    if operation == "ListModelPackages":
        return [Request(f"sagemaker:{operation}", "*")]
    raise AssertionError(f"no IAM mapping for {operation}: add one")


def _policy() -> dict[str, Any]:
    text = IAM_POLICY.read_text()
    text = text.replace("${REGION}", TEST_REGION).replace("${ACCOUNT_ID}", ACCOUNT_ID)
    return json.loads(text)


def test_the_iam_policy_allows_every_registry_call_and_nothing_unused(registry, sagemaker):
    calls: list[tuple[str, dict[str, Any]]] = []

    def record(params: dict[str, Any], model: Any, **_: Any) -> None:
        calls.append((model.name, dict(params)))

    registry.client.meta.events.register("provide-client-params.sagemaker", record)
    first = _register(registry, CUSTOMER, "v1")
    _register(registry, CUSTOMER, "v2", passed=False)
    decide(registry, CUSTOMER, "Approved", reason="ok", decided_by="ana")
    sagemaker.update_model_package(
        ModelPackageArn=first.registry_arn, ModelApprovalStatus="Rejected"
    )
    registry.pull_decisions([CUSTOMER])
    _register(registry, "Odd_Customer", "v1")  # a digest group name

    policy = _policy()
    assert {op for op, _ in calls} == {
        "CreateModelPackageGroup",
        "DescribeModelPackageGroup",
        "CreateModelPackage",
        "UpdateModelPackage",
        "DescribeModelPackage",
        "ListModelPackages",
    }
    requests = [r for op, params in calls for r in _iam_requests(op, params)]
    refused = [r for r in requests if not allowing_statements(policy, r)]
    assert not refused, refused
    granted = {
        a
        for s in policy["Statement"]
        for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    assert granted == {r.action for r in requests}
    # Someone else's group is not ours.
    other = Request(
        "sagemaker:UpdateModelPackage",
        f"arn:aws:sagemaker:{TEST_REGION}:{ACCOUNT_ID}:model-package/fraud-model/3",
    )
    assert not allowing_statements(policy, other)


def test_the_iam_policy_is_well_formed_narrow_and_documented():
    import re

    raw = IAM_POLICY.read_text()
    assert set(re.findall(r"\$\{([^}]*)\}", raw)) == {"REGION", "ACCOUNT_ID"}
    for statement in _policy()["Statement"]:
        actions = (
            statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        )
        resources = (
            statement["Resource"]
            if isinstance(statement["Resource"], list)
            else [statement["Resource"]]
        )
        assert statement["Effect"] == "Allow" and re.fullmatch(r"[A-Za-z0-9]+", statement["Sid"])
        assert all(re.fullmatch(r"sagemaker:[A-Za-z]+", a) for a in actions), actions
        if "*" in resources:
            # Only the one action without resource-level permissions.
            assert resources == ["*"] and actions == ["sagemaker:ListModelPackages"]
        else:
            assert all(
                r.startswith(f"arn:aws:sagemaker:{TEST_REGION}:{ACCOUNT_ID}:") for r in resources
            )
    readme = IAM_POLICY.with_name("README.md").read_text()
    assert IAM_POLICY.name in readme and "sagemaker:ListModelPackages" in readme


def test_the_sagemaker_environment_registers_what_training_recorded(
    aws_env, data_home, sagemaker, monkeypatch
):
    """The registry resources_for("sagemaker") builds, settings from the environment: a version
    the training step wrote to the database only becomes a package on the sensor's next tick."""
    from forecast_assets.definitions import resources_for

    monkeypatch.setenv("FORECAST_AWS_REGION", TEST_REGION)
    monkeypatch.setenv("FORECAST_DATABASE_URL", f"sqlite:///{data_home / 'sm.db'}")
    resources = resources_for("sagemaker")
    assert isinstance(resources["registry"], SageMakerModelRegistry)
    with dg.build_resources({"registry": resources["registry"]}) as built:
        database = built.registry.database
        _register(LocalModelRegistry(database=database), CUSTOMER, "fa-train-hansa-offices-1")
        with dg.build_sensor_context(resources={"registry": resources["registry"]}) as context:
            result = model_registry_sensor(context)
    assert "1 change(s)" in (result.skip_message or "")  # type: ignore[union-attr]
    packages = sagemaker.list_model_packages(ModelPackageGroupName="forecast-hansa-offices")
    (package,) = packages["ModelPackageSummaryList"]
    assert package["ModelApprovalStatus"] == "PendingManualApproval"
    stored = Database(url=f"sqlite:///{data_home / 'sm.db'}").model_version(
        CUSTOMER, "fa-train-hansa-offices-1"
    )
    assert stored is not None and stored.registry_arn == package["ModelPackageArn"]


def test_locally_the_database_is_the_registry(data_home):
    from forecast_assets.definitions import resources_for

    registry = resources_for("local")["registry"]
    assert isinstance(registry, LocalModelRegistry)
    _register(registry, CUSTOMER, "v1")
    with dg.build_sensor_context(resources={"registry": registry}) as context:
        result = model_registry_sensor(context)
    assert result.skip_message == (  # type: ignore[union-attr]
        "checked 1 of 1 customers (hansa-offices … hansa-offices) in the database: nothing to change"
    )


def test_the_command_line_decides_in_sagemaker_too(
    aws_env, data_home, sagemaker, monkeypatch, capsys
):
    from forecast_assets.approval import main

    url = f"sqlite:///{data_home / 'sm.db'}"
    monkeypatch.chdir(data_home.parent)  # no .env here
    for key, value in {
        "FORECAST_ENV": "sagemaker",
        "FORECAST_AWS_REGION": TEST_REGION,
        "FORECAST_DATABASE_URL": url,
    }.items():
        monkeypatch.setenv(key, value)
    registry = SageMakerModelRegistry(database=Database(url=url), region_name=TEST_REGION)
    first = _register(registry, CUSTOMER, "v1")
    assert main(["approve", CUSTOMER, "--reason", "fine", "--by", "ana"]) == 0
    assert "model v1 Approved by ana" in capsys.readouterr().out
    package = sagemaker.describe_model_package(ModelPackageName=first.registry_arn)
    assert package["ModelApprovalStatus"] == "Approved"

    # SageMaker refuses the update: one line, and nothing decided.
    second = _register(registry, CUSTOMER, "v2")
    registry.database.set_registry_arn(CUSTOMER, "v2", second.registry_arn + "0")
    assert main(["reject", CUSTOMER, "--reason", "no", "--by", "ana"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        "forecast-models: customer 'hansa-offices', model v2: SageMaker refused UpdateModelPackage"
    )
    assert err.count("\n") == 1
    assert registry.database.model_version(CUSTOMER, "v2").status == "PendingManualApproval"  # type: ignore[union-attr]
