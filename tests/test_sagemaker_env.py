"""The whole graph for a customer in the `sagemaker` environment, without AWS: S3, SageMaker
bookkeeping and CloudWatch Logs on a moto server, jobs run by the fake SageMaker (the real entry
scripts as local processes), and the device and model registries on a throwaway PostgreSQL."""

from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import pytest

from forecast_assets import publication
from forecast_assets.assets import ALL_ASSETS
from forecast_assets.definitions import assets_with_batches, resources_for
from forecast_assets.demo_data import DEMO_CUSTOMERS
from forecast_assets.jobs import ALL_JOBS
from forecast_assets.publication import FORECASTS
from resources.database import Database
from resources.jobs.sagemaker import SageMakerJobLauncher
from resources.storage import S3ObjectStore
from tests.conftest import TEST_REGION, land
from tests.fake_sagemaker import FakeSageMakerClient

ENV_EXAMPLE = Path(__file__).resolve().parents[1] / ".env.example"
_FAKES: list[FakeSageMakerClient] = []


class FakeBackedLauncher(SageMakerJobLauncher):
    """The real launcher and Pipes client, talking to the fake SageMaker instead of AWS."""

    def _clients(self) -> dict[str, Any]:
        return {"sagemaker": _FAKES[-1], "logs": boto3.client("logs"), "s3": boto3.client("s3")}


def step_failures(result: dg.ExecuteInProcessResult) -> list[str]:
    return [
        e.step_failure_data.error.message
        for e in result.all_events
        if e.is_step_failure and e.step_failure_data.error
    ]


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


@pytest.fixture
def sagemaker_env(aws_env, make_bucket, postgres_url, monkeypatch) -> dict[str, Any]:
    """The `sagemaker` environment configured only through the .env.example variables."""
    bucket = make_bucket()
    settings = {
        **env_example(),
        "FORECAST_AWS_REGION": TEST_REGION,
        "FORECAST_BUCKET": bucket,
        "FORECAST_PREFIX": "fa",
        "FORECAST_DATABASE_URL": postgres_url,
        "FORECAST_TAGS": "team=energy",
        "FORECAST_PREPROCESSING_IMAGE_URI": "123456789012.dkr.ecr.eu-central-1.amazonaws.com/fa-preprocessing:test",
        "FORECAST_TRAINING_IMAGE_URI": "123456789012.dkr.ecr.eu-central-1.amazonaws.com/fa-training:test",
        "FORECAST_INFERENCE_IMAGE_URI": "123456789012.dkr.ecr.eu-central-1.amazonaws.com/fa-inference:test",
    }
    for key, value in settings.items():
        monkeypatch.setenv(key, value)

    resources = resources_for("sagemaker")
    store: S3ObjectStore = resources["store"]
    real = resources["launcher"]
    resources["launcher"] = FakeBackedLauncher(
        store=store,
        region_name=dg.EnvVar("FORECAST_AWS_REGION"),
        role_arn=dg.EnvVar("FORECAST_SAGEMAKER_ROLE_ARN"),
        platform=real.platform,
        preprocessing=real.preprocessing,
        training=real.training,
        inference=real.inference,
        first_poll_seconds=0.2,
        max_poll_seconds=1.0,
        message_interval_seconds=0.5,
    )
    return {
        "bucket": bucket,
        "settings": settings,
        "data_store": S3ObjectStore(bucket=bucket, prefix="fa"),
        "resources": resources,
        "postgres_url": postgres_url,
    }


@pytest.mark.slow
@pytest.mark.postgres
def test_forecast_job_in_the_sagemaker_environment(sagemaker_env, tmp_path):
    bucket, settings = sagemaker_env["bucket"], sagemaker_env["settings"]
    data_store, postgres_url = sagemaker_env["data_store"], sagemaker_env["postgres_url"]
    customer = DEMO_CUSTOMERS[1]
    land(data_store, [customer.customer_id], days=75)
    defs = dg.Definitions(assets=ALL_ASSETS, jobs=ALL_JOBS, resources=sagemaker_env["resources"])

    with (
        FakeSageMakerClient(store=data_store, jobs_root=tmp_path / "jobs") as fake,
        dg.instance_for_test() as instance,
    ):
        _FAKES.append(fake)
        instance.add_dynamic_partitions("customers", [customer.customer_id])
        result = defs.resolve_job_def("forecast_job").execute_in_process(
            instance=instance,
            partition_key=customer.customer_id,
            run_config={"ops": {"models__load_forecast_model": {"config": {"n_estimators": 40}}}},
            raise_on_error=False,
        )
        assert result.success, step_failures(result)

        creates = [(op, kw) for op, kw in fake.calls if op.startswith("Create")]
        logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    # Each job's CloudWatch lines reached the run's log, training's included.
    for step in ("prep", "train", "infer"):
        assert any(
            m.startswith(f"[fa-{step}-{customer.customer_id}-") and "report:" in m for m in logs
        ), step
    assert [op for op, _ in creates] == [
        "CreateProcessingJob",
        "CreateTrainingJob",
        "CreateProcessingJob",
    ]
    for _, request in creates:
        tags = {t["Key"]: t["Value"] for t in request["Tags"]}
        assert tags["team"] == "energy" and tags["dagster/partition"] == customer.customer_id
        assert request["RoleArn"] == settings["FORECAST_SAGEMAKER_ROLE_ARN"]
    training = creates[1][1]
    assert training["AlgorithmSpecification"]["TrainingImage"].endswith("fa-training:test")
    assert (
        training["OutputDataConfig"]["S3OutputPath"]
        == f"s3://{bucket}/fa/models/{customer.customer_id}"
    )

    metadata = {
        e.step_materialization_data.materialization.asset_key.to_user_string(): e.step_materialization_data.materialization.metadata
        for e in result.get_asset_materialization_events()
    }
    model = metadata["models/load_forecast_model"]
    assert "console.aws.amazon.com/sagemaker" in model["console_url"].value
    assert model["model_r2"].value > 0.7  # reported by the training script through S3 Pipes
    assert metadata["preprocessed/load"]["devices"].value == customer.devices

    database = Database(url=postgres_url)
    assert len(database.devices(customer.customer_id)) == customer.devices
    approved = database.latest_approved_model(customer.customer_id)
    assert approved is not None and approved.model_uri.startswith(f"s3://{bucket}/fa/models/")
    assert len(database.latest_forecast(customer.customer_id)) == 48 * customer.devices
    current = publication.current(data_store, FORECASTS, customer.customer_id)
    assert current is not None and data_store.exists(current.uri("forecast.parquet"))


@pytest.mark.slow
@pytest.mark.postgres
def test_a_batch_of_customers_runs_as_one_sagemaker_job_per_step(sagemaker_env, tmp_path):
    bucket, data_store = sagemaker_env["bucket"], sagemaker_env["data_store"]
    customers = [DEMO_CUSTOMERS[0], DEMO_CUSTOMERS[2]]
    ids = [c.customer_id for c in customers]
    land(data_store, ids, days=75)
    defs = dg.Definitions(
        assets=assets_with_batches(2), jobs=ALL_JOBS, resources=sagemaker_env["resources"]
    )
    with (
        FakeSageMakerClient(store=data_store, jobs_root=tmp_path / "jobs") as fake,
        dg.instance_for_test() as instance,
    ):
        _FAKES.append(fake)
        instance.add_dynamic_partitions("customers", ids)
        result = defs.resolve_job_def("forecast_job").execute_in_process(
            instance=instance,
            tags={
                "dagster/asset_partition_range_start": ids[0],
                "dagster/asset_partition_range_end": ids[-1],
            },
            run_config={"ops": {"models__load_forecast_model": {"config": {"n_estimators": 30}}}},
            raise_on_error=False,
        )
        assert result.success, step_failures(result)
        creates = [(op, kw) for op, kw in fake.calls if op.startswith("Create")]

    # One job per step for both customers, reading a folder per customer.
    assert [op for op, _ in creates] == [
        "CreateProcessingJob",
        "CreateTrainingJob",
        "CreateProcessingJob",
    ]
    preprocessing = creates[0][1]
    raw = next(i for i in preprocessing["ProcessingInputs"] if i["InputName"] == "raw")
    assert raw["S3Input"]["S3DataType"] == "ManifestFile"
    tags = {t["Key"]: t["Value"] for t in preprocessing["Tags"]}
    assert tags["forecast-assets/customers"] == "2"
    assert tags["dagster/partition"] == f"{ids[0]}...{ids[1]}"
    channels = {c["ChannelName"] for c in creates[1][1]["InputDataConfig"]}
    assert channels == {"train", "batch"}

    # Each partition got its own materialization with what the job reported for it via S3 Pipes.
    by_partition: dict[str, dict] = {}
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        if materialization.asset_key == dg.AssetKey(["models", "load_forecast_model"]):
            by_partition[materialization.partition] = materialization.metadata
    assert set(by_partition) == set(ids)
    assert by_partition[ids[0]]["r2"].value != by_partition[ids[1]]["r2"].value
    database = Database(url=sagemaker_env["postgres_url"])
    for customer in customers:
        approved = database.latest_approved_model(customer.customer_id)
        assert approved is not None
        assert approved.model_uri == (
            f"s3://{bucket}/fa/models/{customer.customer_id}/{approved.version}/output/model.tar.gz"
        )
        assert data_store.exists(approved.model_uri)
        assert len(database.latest_forecast(customer.customer_id)) == 48 * customer.devices
