"""SageMaker jobs on several instances: a batch's customers split over the hosts, each host with
its own outputs, Pipes messages and log, merged on the Dagster side.

Layers: the host share and host discovery (pure); the request settings (instance count capped at
the number of customers); small batch scripts on 3 instances (processing, and training with its
hosts' models packed into one archive) through the local launcher and through the fake SageMaker
with the real Pipes client; and the real preprocessing, training and inference steps for 7
customers on 3 instances (slow).
"""

import json
import re
import textwrap
from typing import Any

import boto3
import dagster as dg
import pytest

from forecast_assets import paths, publication
from forecast_assets.definitions import assets_with_batches
from forecast_assets.demo_data import DemoCustomer, generate_customer_files
from forecast_assets.publication import FORECASTS, PREPROCESSED
from forecast_core import runtime
from forecast_core.batch import host_share, run_each
from forecast_core.runtime import Cluster, Report, cluster, host_message_params, sort_hosts
from resources.database import Database
from resources.jobs import LocalJobLauncher
from resources.jobs.base import CompletedJob
from resources.jobs.requests import JobInput, JobOutput, processing_job_request
from resources.jobs.settings import JobSettings, default_settings
from resources.storage import LocalObjectStore, join_uri
from tests.conftest import TEST_END
from tests.test_sagemaker_client import ROLE, error_text, make_client, run_asset
from tests.test_sagemaker_env import sagemaker_env  # noqa: F401  (a fixture)

CUSTOMERS = [f"c{n}" for n in range(1, 8)]  # 7 customers
HOSTS = ["algo-1", "algo-2", "algo-3"]
# Round-robin in batch order: c1 -> algo-1, c2 -> algo-2, c3 -> algo-3, c4 -> algo-1, ...
EXPECTED_HOST = {c: HOSTS[i % 3] for i, c in enumerate(CUSTOMERS)}


# The host share and host discovery ----------------------------------------------------------------


def test_hosts_sort_by_number_so_algo_10_follows_algo_9():
    hosts = [f"algo-{n}" for n in (10, 2, 11, 1, 9)]
    assert sort_hosts(hosts) == ["algo-1", "algo-2", "algo-9", "algo-10", "algo-11"]
    assert Cluster.of("algo-10", hosts).index == 3


@pytest.mark.parametrize("count", [1, 2, 3, 5, 7])
def test_every_customer_falls_to_exactly_one_host_round_robin(count: int):
    hosts = runtime.host_names(count)
    shares = {h: host_share(CUSTOMERS, Cluster.of(h, hosts)) for h in hosts}
    flat = [c for share in shares.values() for c in share]
    assert sorted(flat) == sorted(CUSTOMERS) and len(flat) == len(set(flat))
    for index, host in enumerate(hosts):
        assert shares[host] == CUSTOMERS[index::count]
    assert max(map(len, shares.values())) - min(map(len, shares.values())) <= 1


def test_more_hosts_than_customers_leaves_some_hosts_idle():
    hosts = runtime.host_names(12)
    shares = {h: host_share(CUSTOMERS, Cluster.of(h, list(reversed(hosts)))) for h in hosts}
    assert shares["algo-7"] == ["c7"] and shares["algo-1"] == ["c1"]
    assert shares["algo-8"] == shares["algo-10"] == shares["algo-12"] == []


def test_the_host_comes_from_the_toolkit_variables_then_resourceconfig(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "OPT_ML", tmp_path)
    monkeypatch.setenv("SM_INPUT_CONFIG_DIR", str(tmp_path / "input" / "config"))
    monkeypatch.delenv("SM_CURRENT_HOST", raising=False)
    monkeypatch.delenv("SM_HOSTS", raising=False)
    assert cluster() == runtime.SINGLE_HOST

    # A processing container: /opt/ml/config/resourceconfig.json.
    config = tmp_path / "config" / "resourceconfig.json"
    config.parent.mkdir(parents=True)
    config.write_text(
        json.dumps({"current_host": "algo-2", "hosts": ["algo-3", "algo-1", "algo-2"]})
    )
    assert cluster() == Cluster("algo-2", ("algo-1", "algo-2", "algo-3"))

    # The training toolkit's variables come first.
    monkeypatch.setenv("SM_CURRENT_HOST", "algo-1")
    monkeypatch.setenv("SM_HOSTS", json.dumps(["algo-1", "algo-2"]))
    assert cluster() == Cluster("algo-1", ("algo-1", "algo-2"))

    monkeypatch.setenv("SM_CURRENT_HOST", "algo-9")
    with pytest.raises(runtime.JobFailed, match="algo-9"):
        cluster()


def test_each_host_derives_its_own_message_place_only_on_several_hosts():
    s3 = {"bucket": "b", "key_prefix": "fa/pipes/0123/messages"}
    assert host_message_params(s3, "algo-1", 1) == s3
    assert host_message_params(s3, "algo-3", 3)["key_prefix"] == "fa/pipes/0123/messages/algo-3"
    path = {"path": "/tmp/x/messages", "include_stdio_in_messages": False}
    assert host_message_params(path, "algo-2", 2)["path"] == "/tmp/x/messages.algo-2"
    assert host_message_params(path, "algo-2", 1) == path


class _Recorded(Report):
    def __init__(self) -> None:
        self.done: list[str] = []
        self.failed: list[str] = []
        self.lines: list[str] = []

    def materialization(self, metadata, customer=None) -> None:
        assert customer is not None
        self.done.append(customer)

    def customer_failure(self, customer: str, reason: str) -> None:
        self.failed.append(customer)

    def log(self, message: str) -> None:
        self.lines.append(message)


def test_run_each_works_only_on_its_share_and_names_its_host_when_one_fails():
    entries = [{"customer_id": c} for c in CUSTOMERS]

    def work(entry: Any) -> dict[str, Any]:
        if entry["customer_id"] == "c5":
            raise ValueError("no rows")
        return {}

    report = _Recorded()
    run_each(report, entries, work, Cluster.of("algo-1", HOSTS))
    assert report.done == ["c1", "c4", "c7"] and report.failed == []
    assert "host algo-1 (1 of 3) takes 3 of the batch's 7 customers: c1, c4, c7" in report.lines

    report = _Recorded()
    assert run_each(report, entries, work, Cluster.of("algo-2", HOSTS)) == [
        "customer 'c5': ValueError: no rows"
    ]
    assert report.done == ["c2"] and report.failed == ["c5"]
    assert any(
        line.startswith("1 of 2 customers failed on host algo-2: customer 'c5': ValueError")
        for line in report.lines
    )

    # A host whose whole share failed still exits 0: SageMaker would fail the whole job, and
    # the other hosts' customers with it.
    report = _Recorded()
    assert run_each(report, [{"customer_id": "c5"}], work, Cluster.of("algo-1", HOSTS)) == [
        "customer 'c5': ValueError: no rows"
    ]


# Settings --------------------------------------------------------------------------------------


def test_a_job_never_asks_for_more_instances_than_it_has_customers():
    settings = default_settings("preprocessing").model_copy(update={"instance_count": 3})
    one = settings.for_batch(1, "preprocessing")
    assert one.instance_count == 1 and one.max_runtime_seconds == settings.max_runtime_seconds
    request = processing_job_request(
        name="fa-prep-acme-0123abcd-0",
        settings=one,
        role_arn=ROLE,
        entrypoint=["python3", "x.py"],
    )
    assert request["ProcessingResources"]["ClusterConfig"]["InstanceCount"] == 1
    two = settings.for_batch(2, "preprocessing")
    assert (two.instance_count, two.max_runtime_seconds) == (2, settings.max_runtime_seconds)
    # 7 on 3: the busiest host has 3 customers, so 3 times the per-customer limit.
    seven = settings.for_batch(7, "preprocessing")
    assert (seven.instance_count, seven.max_runtime_seconds) == (3, 3 * 3600)


# A batch script on 3 instances -------------------------------------------------------------------

# Processes each customer of its host's share: writes <out>/<customer>/result.json naming the host,
# prints numbered lines (with pauses, so that the hosts' lines interleave), and fails a customer
# listed in FAIL.
BATCH_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    from forecast_core.batch import read_batch, run_each
    from forecast_core.runtime import cluster, run_job

    def main(report):
        batch, out = Path(sys.argv[1]), Path(sys.argv[2])
        host = cluster().current_host
        fail = set(os.environ.get("FAIL", "").split(","))

        def one(entry):
            customer = entry["customer_id"]
            for i in range(3):
                print(f"{host} {customer} line {i}", flush=True)
                time.sleep(0.05)
            if customer in fail:
                raise ValueError(f"customer '{customer}': bad data on purpose")
            (out / customer).mkdir(parents=True)
            (out / customer / "result.json").write_text(json.dumps({"host": host}))
            return {"host": host, "pid": os.getpid()}

        run_each(report, read_batch(batch / "batch.json"), one)

    run_job("processing", main)
    """
)


def _batch_request(store, name: str, fail: str = "") -> dict[str, Any]:
    code = store.uri("code", name)
    store.write_bytes(f"{code}/job.py", BATCH_SCRIPT.encode())
    batch = store.uri("jobs", name, "input", "batch")
    entries = [{"customer_id": c} for c in CUSTOMERS]
    store.write_bytes(f"{batch}/batch.json", json.dumps({"customers": entries}).encode())
    settings = JobSettings(image_uri="test:local", instance_count=3, max_runtime_seconds=120)
    return processing_job_request(
        name=name,
        settings=settings.for_batch(len(CUSTOMERS), "preprocessing"),
        role_arn=ROLE,
        entrypoint=["python3", "/opt/ml/processing/input/code/job.py"],
        arguments=["/opt/ml/processing/input/batch", "/opt/ml/processing/output/out"],
        inputs=[JobInput("code", code + "/"), JobInput("batch", batch + "/")],
        outputs=[JobOutput("out", store.uri("jobs", name, "output", "out"))],
        environment={"FAIL": fail},
    )


def _check_outputs(store, name: str, customers: list[str]) -> None:
    """Every customer's folder is in the one output URI, written by its own host."""
    out = store.uri("jobs", name, "output", "out")
    keys = sorted(o.uri.removeprefix(out + "/") for o in store.list_objects(out + "/"))
    assert keys == sorted(f"{c}/result.json" for c in customers)
    for customer in customers:
        written = json.loads(store.read_bytes(f"{out}/{customer}/result.json"))
        assert written["host"] == EXPECTED_HOST[customer], customer


def _check_reports(job: CompletedJob) -> None:
    """Each customer reported exactly once, by its host; three processes in all."""
    assert job.invocation is not None
    messages = [m for m in job.invocation.get_custom_messages() if "customer_id" in m]
    assert sorted(m["customer_id"] for m in messages) == sorted(CUSTOMERS)  # once each
    reported = job.reported_by_customer()
    assert {c: r["host"] for c, r in reported.items()} == EXPECTED_HOST
    pids = {r["host"]: r["pid"] for r in reported.values()}
    assert len(set(pids.values())) == 3


def _launch_locally(
    store: LocalObjectStore, request: dict[str, Any], kind: str = "processing"
) -> tuple[dg.ExecuteInProcessResult, CompletedJob | None]:
    """Run ``request`` through the local launcher in an asset; the run and the completed job."""
    launcher = LocalJobLauncher(store=store)
    captured: dict[str, CompletedJob] = {}

    @dg.asset
    def probe(
        context: dg.AssetExecutionContext, launcher: LocalJobLauncher
    ) -> dg.MaterializeResult:
        launch = launcher.run_processing_job if kind == "processing" else launcher.run_training_job
        captured["job"] = job = launch(context=context, request=request)
        return dg.MaterializeResult(metadata=job.metadata())

    result = dg.materialize(
        [probe], resources={"launcher": launcher, "store": store}, raise_on_error=False
    )
    return result, captured.get("job")


def test_a_batch_on_three_instances_through_the_local_launcher(store: LocalObjectStore, data_home):
    name = "fa-prep-batch7-0123abcd-0"
    result, job = _launch_locally(store, _batch_request(store, name))
    assert result.success
    assert job is not None
    assert job.instance_count == 3 and job.metadata()["instance_count"] == 3
    _check_reports(job)
    _check_outputs(store, name, CUSTOMERS)
    # One folder, log and resourceconfig.json per host; the job's log has all three.
    job_dir = data_home / "jobs" / name
    for host in HOSTS:
        config = json.loads((job_dir / host / "opt/ml/config/resourceconfig.json").read_text())
        assert config == {"current_host": host, "hosts": HOSTS}
        assert f"{host} " in (job_dir / host / "job.log").read_text()
    combined = (job_dir / "job.log").read_text().splitlines()
    assert {line.split("]")[0] + "]" for line in combined} == {f"[{h}]" for h in HOSTS}
    assert json.loads((job_dir / "describe.json").read_text())["Hosts"] == dict.fromkeys(
        HOSTS, "Completed"
    )


def test_a_failing_customer_is_reported_and_the_job_completes_with_the_others(
    store: LocalObjectStore, data_home
):
    name = "fa-prep-batch7-0123abcd-1"
    result, job = _launch_locally(store, _batch_request(store, name, "c5"))
    # Every host completes (a failed host would fail the job and lose the others' outputs);
    # c5's reason came through Pipes, for the step to fail c5's partition alone.
    assert result.success, error_text(result)
    assert job is not None
    assert job.failed_customers() == {"c5": "customer 'c5': bad data on purpose"}
    described = json.loads((data_home / "jobs" / name / "describe.json").read_text())
    assert described["Hosts"] == dict.fromkeys(HOSTS, "Completed")
    _check_outputs(store, name, [c for c in CUSTOMERS if c != "c5"])
    log = (data_home / "jobs" / name / "algo-2" / "job.log").read_text()
    assert "1 of 2 customers failed on host algo-2: customer 'c5': bad data on purpose" in log


def test_a_batch_on_three_instances_through_the_fake_sagemaker(fake, s3_store):
    client = make_client(fake, s3_store)
    name = "fa-prep-batch7-0123abcd-0"
    request = _batch_request(s3_store, name)
    result, captured = run_asset(client, request)
    assert result.success, error_text(result)

    # Three processes, one per host, each with its own log stream named as SageMaker names it.
    assert sorted(fake.processes[name]) == HOSTS
    streams = fake.log_streams(name)
    assert sorted(streams) == HOSTS
    assert all(streams[h].startswith(f"{name}/{h}-") for h in HOSTS)

    # Every customer reported once, by its host, through each host's own S3 message folder.
    messages = [m for m in captured["custom"] if "customer_id" in m]
    assert sorted(m["customer_id"] for m in messages) == sorted(CUSTOMERS)
    assert {m["customer_id"]: m["metadata"]["host"] for m in messages} == EXPECTED_HOST
    assert captured["description"]["ProcessingResources"]["ClusterConfig"]["InstanceCount"] == 3
    _check_outputs(s3_store, name, CUSTOMERS)

    # The three streams reached the run's log, merged in time order.
    logs = boto3.client("logs")
    stamp: dict[str, int] = {}
    for stream in streams.values():
        events = logs.get_log_events(
            logGroupName="/aws/sagemaker/ProcessingJobs", logStreamName=stream, startFromHead=True
        )["events"]
        stamp.update({e["message"]: e["timestamp"] for e in events if " line " in e["message"]})
    assert len(stamp) == 7 * 3
    shown = [
        m.removeprefix(f"[{name}] ")
        for m in captured["logs"]
        if m.startswith(f"[{name}] ") and " line " in m
    ]
    assert sorted(shown) == sorted(stamp)
    times = [stamp[m] for m in shown]
    assert times == sorted(times)  # (test_sagemaker_client covers lines that arrive late)


def test_a_failing_customer_on_the_fake_sagemaker_is_reported_and_the_job_completes(fake, s3_store):
    client = make_client(fake, s3_store)
    name = "fa-prep-batch7-0123abcd-1"
    result, captured = run_asset(client, _batch_request(s3_store, name, "c5"))
    assert result.success, error_text(result)
    errors = [m for m in captured["custom"] if "error" in m]
    assert errors == [{"customer_id": "c5", "error": "customer 'c5': bad data on purpose"}]
    described = fake.wait_until_done(name)
    assert described["ProcessingJobStatus"] == "Completed"
    _check_outputs(s3_store, name, [c for c in CUSTOMERS if c != "c5"])


# Training: each host writes its customers' models; SageMaker packs every host's /opt/ml/model into
# the job's one model.tar.gz ("If multiple containers in a single training job write to this
# directory they should ensure no file/directory names clash. SageMaker AI aggregates the result
# in a TAR file": AWS, "How Amazon SageMaker AI Processes Training Output").
TRAINING_BATCH_SCRIPT = textwrap.dedent(
    """
    import json, os
    from forecast_core import runtime
    from forecast_core.batch import read_batch, run_each

    def main(report):
        host = runtime.cluster().current_host
        clash = os.environ.get("CLASH") == "1"

        def one(entry):
            customer = entry["customer_id"]
            folder = runtime.model_dir() / customer
            folder.mkdir(parents=True)
            (folder / "model.json").write_text(json.dumps({"host": host}))
            if clash:  # every host writes this one too: SageMaker asks hosts not to
                (runtime.model_dir() / "summary.json").write_text(host)
            return {"host": host}

        run_each(report, read_batch(runtime.channel_dir("batch") / "batch.json"), one)

    runtime.run_job("training", main)
    """
)


def _training_batch_request(store, name: str, clash: bool = False) -> dict[str, Any]:
    from tests.test_sagemaker_client import training_request_for

    request = training_request_for(store, name, TRAINING_BATCH_SCRIPT)
    batch = store.uri("jobs", name, "input", "batch")
    entries = [{"customer_id": c} for c in CUSTOMERS]
    store.write_bytes(f"{batch}/batch.json", json.dumps({"customers": entries}).encode())
    request["InputDataConfig"].append(
        {
            "ChannelName": "batch",
            "DataSource": {
                "S3DataSource": {
                    "S3DataType": "S3Prefix",
                    "S3Uri": batch + "/",
                    "S3DataDistributionType": "FullyReplicated",
                }
            },
        }
    )
    request["ResourceConfig"]["InstanceCount"] = 3
    request["Environment"] = {**request.get("Environment", {}), "CLASH": "1" if clash else "0"}
    return request


def _model_members(store, name: str) -> dict[str, str]:
    import io
    import tarfile

    data = store.read_bytes(store.uri("models", name, "output", "model.tar.gz"))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {
            m.name: tar.extractfile(m).read().decode()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


def test_a_training_batch_on_three_instances_packs_every_hosts_models_into_one_archive(
    fake, s3_store
):
    client = make_client(fake, s3_store)
    name = "fa-train-batch7-0123abcd-0"
    result, captured = run_asset(client, _training_batch_request(s3_store, name), kind="training")
    assert result.success, error_text(result)
    assert sorted(fake.processes[name]) == HOSTS
    assert sorted(fake.log_streams(name)) == HOSTS
    assert captured["description"]["ResourceConfig"]["InstanceCount"] == 3
    messages = [m for m in captured["custom"] if "customer_id" in m]
    assert {m["customer_id"]: m["metadata"]["host"] for m in messages} == EXPECTED_HOST
    members = _model_members(s3_store, name)
    assert members == {f"{c}/model.json": json.dumps({"host": EXPECTED_HOST[c]}) for c in CUSTOMERS}


def test_hosts_writing_the_same_model_file_fail_the_training_job(fake, s3_store):
    client = make_client(fake, s3_store)
    name = "fa-train-batch7-0123abcd-1"
    result, _ = run_asset(
        client, _training_batch_request(s3_store, name, clash=True), kind="training"
    )
    assert not result.success
    assert "summary.json was written by two hosts" in error_text(result)
    assert fake.wait_until_done(name)["TrainingJobStatus"] == "Failed"


def test_a_training_batch_on_three_local_instances(store: LocalObjectStore, data_home):
    name = "fa-train-batch7-0123abcd-2"
    result, job = _launch_locally(store, _training_batch_request(store, name), kind="training")
    assert result.success, error_text(result)
    assert job is not None and job.instance_count == 3
    reported = job.reported_by_customer()
    assert {c: r["host"] for c, r in reported.items()} == EXPECTED_HOST
    assert set(_model_members(store, name)) == {f"{c}/model.json" for c in CUSTOMERS}
    for host in HOSTS:
        config = data_home / "jobs" / name / host / "opt/ml/input/config/resourceconfig.json"
        assert json.loads(config.read_text()) == {"current_host": host, "hosts": HOSTS}


@pytest.fixture
def fake(s3_store, tmp_path):
    from tests.fake_sagemaker import FakeSageMakerClient

    with FakeSageMakerClient(store=s3_store, jobs_root=tmp_path / "jobs") as client:
        yield client


# The real steps: 7 customers on 3 instances (slow) ------------------------------------------------

STEPS = [
    dg.AssetKey(["landing", "raw_load"]),
    dg.AssetKey(["preprocessed", "load"]),
    dg.AssetKey(["forecasts", "load_forecast"]),
]
SEVEN = [
    DemoCustomer(f"multi-{n}", vendor, devices, profile)
    for n, (vendor, devices, profile) in enumerate(
        [
            ("enerlog", 2, "office"),
            ("gridsense", 1, "retail"),
            ("kilowatch", 2, "cold-storage"),
            ("enerlog", 1, "factory"),
            ("kilowatch", 1, "school"),
            ("gridsense", 2, "office"),
            ("enerlog", 1, "retail"),
        ],
        start=1,
    )
]
SEVEN_IDS = [c.customer_id for c in SEVEN]
SEVEN_HOST = {c: HOSTS[i % 3] for i, c in enumerate(SEVEN_IDS)}


def _land_seven(store, days: int = 30) -> None:
    for customer in SEVEN:
        prefix = paths.landing_prefix(store, customer.customer_id)
        for name, data in generate_customer_files(customer, end=TEST_END, days=days).items():
            store.write_bytes(join_uri(prefix, name), data)


def _run_batch(
    resources: dict[str, Any], instance, selection=STEPS, run_config=None
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        assets_with_batches(7),
        selection=selection,
        resources=resources,
        instance=instance,
        run_config=run_config,
        tags={
            "dagster/asset_partition_range_start": SEVEN_IDS[0],
            "dagster/asset_partition_range_end": SEVEN_IDS[-1],
        },
        raise_on_error=False,
    )


def _check_seven(result: dg.ExecuteInProcessResult, store) -> dict[str, dict[str, Any]]:
    """Every customer materialized once per step, on its own partition, from a 3-instance job;
    its outputs published. Returns the steps' job names."""
    found: dict[str, dict[str, Any]] = {}
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        key = materialization.asset_key.to_user_string()
        assert materialization.partition not in found.setdefault(key, {})  # exactly once
        found[key][materialization.partition] = materialization.metadata
    for key in ("preprocessed/load", "forecasts/load_forecast"):
        assert set(found[key]) == set(SEVEN_IDS), key
        for metadata in found[key].values():
            assert metadata["instance_count"].value == 3
            assert metadata["rows"].value > 0
        assert len({m["job_name"].value for m in found[key].values()}) == 1
    by_id = {c.customer_id: c for c in SEVEN}
    for customer in SEVEN_IDS:
        assert found["preprocessed/load"][customer]["devices"].value == by_id[customer].devices
        assert publication.current(store, PREPROCESSED, customer) is not None
        assert publication.current(store, FORECASTS, customer) is not None
        assert (
            found["forecasts/load_forecast"][customer]["rows"].value == 48 * by_id[customer].devices
        )
    return found


def _shares_in(lines: list[str]) -> list[str]:
    """The customers a host's log says it processed (run_each's 'customer 'x' (i of n)'; the
    training script's progress lines, 'customer 'x': ...', are not shares)."""
    return [m[1] for line in lines if (m := re.fullmatch(r"customer '(.*)' \(\d+ of \d+\)", line))]


@pytest.mark.slow
def test_seven_customers_on_three_local_instances(data_home, store, instance):
    """Preprocessing, training and inference, each one job on 3 instances for 7 customers."""
    _land_seven(store, days=70)  # training needs 63 days
    instance.add_dynamic_partitions("customers", SEVEN_IDS)
    three = {"instance_count": 3}
    launcher = LocalJobLauncher(
        store=store,
        preprocessing=default_settings("preprocessing").model_copy(update=three),
        training=default_settings("training").model_copy(update=three),
        inference=default_settings("inference").model_copy(update=three),
    )
    model = dg.AssetKey(["models", "load_forecast_model"])
    result = _run_batch(
        {"store": store, "launcher": launcher, "database": Database()},
        instance,
        selection=[*STEPS, model],
        run_config={"ops": {"models__load_forecast_model": {"config": {"n_estimators": 30}}}},
    )
    assert result.success, error_text(result)
    found = _check_seven(result, store)
    # Each customer's own model, from the one 3-instance training job, made its forecast.
    assert set(found["models/load_forecast_model"]) == set(SEVEN_IDS)
    for customer in SEVEN_IDS:
        trained = found["models/load_forecast_model"][customer]
        assert trained["instance_count"].value == 3
        forecast = found["forecasts/load_forecast"][customer]
        if trained["approval_status"].value == "Approved":
            assert forecast["source"].value == "newest"
            assert forecast["model_version"].value == trained["model_version"].value
    approved = [
        c
        for c in SEVEN_IDS
        if found["models/load_forecast_model"][c]["approval_status"].value == "Approved"
    ]
    assert len(approved) >= 4, approved  # the demo profiles beat seasonal naive
    for key in ("preprocessed/load", "models/load_forecast_model", "forecasts/load_forecast"):
        job_dir = data_home / "jobs" / next(iter(found[key].values()))["job_name"].value
        for index, host in enumerate(HOSTS):
            lines = (job_dir / host / "job.log").read_text().splitlines()
            assert _shares_in(lines) == SEVEN_IDS[index::3], (key, host)


@pytest.mark.slow
@pytest.mark.postgres
def test_seven_customers_on_three_sagemaker_instances(sagemaker_env, tmp_path, monkeypatch):  # noqa: F811
    from tests.fake_sagemaker import FakeSageMakerClient
    from tests.test_sagemaker_env import _FAKES

    store = sagemaker_env["data_store"]
    monkeypatch.setenv("FORECAST_PREPROCESSING_INSTANCE_COUNT", "3")
    monkeypatch.setenv("FORECAST_INFERENCE_INSTANCE_COUNT", "3")
    _land_seven(store)
    with (
        FakeSageMakerClient(store=store, jobs_root=tmp_path / "jobs") as fake,
        dg.instance_for_test() as instance,
    ):
        _FAKES.append(fake)
        instance.add_dynamic_partitions("customers", SEVEN_IDS)
        result = _run_batch(sagemaker_env["resources"], instance)
        assert result.success, error_text(result)
        found = _check_seven(result, store)
        run_log = [entry.user_message for entry in instance.all_logs(result.run_id)]

        creates = [kw for op, kw in fake.calls if op == "CreateProcessingJob"]
        assert [c["ProcessingResources"]["ClusterConfig"]["InstanceCount"] for c in creates] == [
            3,
            3,
        ]
        logs = boto3.client("logs")
        for key in ("preprocessed/load", "forecasts/load_forecast"):
            name = next(iter(found[key].values()))["job_name"].value
            assert sorted(fake.processes[name]) == HOSTS  # one process per instance
            streams = fake.log_streams(name)
            stamps: dict[str, int] = {}
            for index, host in enumerate(HOSTS):
                events = logs.get_log_events(
                    logGroupName="/aws/sagemaker/ProcessingJobs",
                    logStreamName=streams[host],
                    startFromHead=True,
                )["events"]
                lines = [e["message"] for e in events]
                assert _shares_in(lines) == SEVEN_IDS[index::3], (key, host)
                stamps.update({f"{host}|{e['message']}": e["timestamp"] for e in events})
            # The run's log shows the three streams merged by time.
            shown = [m.removeprefix(f"[{name}] ") for m in run_log if m.startswith(f"[{name}] ")]
            starts = [m for m in shown if m.startswith("customer '")]
            assert sorted(_shares_in(starts)) == sorted(SEVEN_IDS)
            times = [next(t for k, t in stamps.items() if k.endswith(f"|{m}")) for m in starts]
            assert times == sorted(times)


@pytest.mark.slow
@pytest.mark.postgres
def test_one_bad_customer_of_seven_fails_alone_on_the_sagemaker_step(
    sagemaker_env,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    from tests.fake_sagemaker import FakeSageMakerClient
    from tests.test_sagemaker_env import _FAKES

    store = sagemaker_env["data_store"]
    monkeypatch.setenv("FORECAST_PREPROCESSING_INSTANCE_COUNT", "3")
    _land_seven(store)
    bad = SEVEN_IDS[4]  # on algo-2
    with (
        FakeSageMakerClient(store=store, jobs_root=tmp_path / "jobs") as fake,
        dg.instance_for_test() as instance,
    ):
        _FAKES.append(fake)
        instance.add_dynamic_partitions("customers", SEVEN_IDS)
        validated = _run_batch(sagemaker_env["resources"], instance, STEPS[:1])
        assert validated.success, error_text(validated)
        # The customer's file changes after validation: its preprocessing fails (bad data).
        landed = [o.uri for o in store.list_objects(paths.landing_prefix(store, bad))]
        store.write_bytes(landed[0], store.read_bytes(landed[0]) + b"\n")
        result = _run_batch(sagemaker_env["resources"], instance, STEPS[1:2])
        assert not result.success
        message = error_text(result)
        assert "1 of 7 customer(s) failed at preprocessed/load" in message
        assert f"customer '{bad}', file " in message
        assert "content changed since it was validated" in message
        (name,) = [kw["ProcessingJobName"] for op, kw in fake.calls if op == "CreateProcessingJob"]
        assert fake.wait_until_done(name)["ProcessingJobStatus"] == "Completed"
        # The other six were processed by their hosts and published; the bad one was not.
        for index, host in enumerate(HOSTS):
            log = (fake.job_dir(name) / host / "job.log").read_text()
            for customer in SEVEN_IDS[index::3]:
                assert f"report[{customer}]" in log or customer == bad
        for customer in SEVEN_IDS:
            published = publication.current(store, PREPROCESSED, customer)
            assert (published is None) == (customer == bad), customer
