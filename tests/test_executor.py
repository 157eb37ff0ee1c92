"""Every job of the code location runs its steps in its run worker, not a process per step
(``forecast_assets/definitions.py`` says why), and such a run still claims pool slots and fails
with its step's reason.

``execute_in_process`` always runs in process whatever the job's executor, so the runs here go
through ``dg.execute_job``, which uses the executor the code location resolved for the job.
"""

from __future__ import annotations

import os

import dagster as dg
import pytest

from forecast_assets.assets.common import PROCESSING_POOL
from forecast_assets.definitions import build_definitions
from forecast_assets.demo_data import DEMO_CUSTOMERS
from forecast_assets.jobs import ALL_JOBS
from tests.conftest import land

CUSTOMER = DEMO_CUSTOMERS[0].customer_id
RAW_AND_PREPROCESSED = [dg.AssetKey(["landing", "raw_load"]), dg.AssetKey(["preprocessed", "load"])]


def forecast_job() -> dg.JobDefinition:
    """The code location's forecast_job, rebuilt by name wherever the run executes."""
    return build_definitions("local").resolve_job_def("forecast_job")


@pytest.mark.parametrize("environment", ["local", "sagemaker"])
def test_every_job_of_the_code_location_runs_in_process(environment):
    defs = build_definitions(environment)  # type: ignore[arg-type]
    jobs = [defs.resolve_job_def(job.name) for job in ALL_JOBS]
    # The job the UI's "Materialize" and the overview sensor's runs use.
    jobs.append(defs.resolve_implicit_global_asset_job_def())
    assert {job.name: job.executor_def.name for job in jobs} == {
        job.name: dg.in_process_executor.name for job in jobs
    }


@pytest.fixture
def pool_instance(tmp_path, data_home):
    """A test instance with the repo's pool settings: op granularity, one slot per pool."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    overrides = {"concurrency": {"pools": {"granularity": "op", "default_limit": 1}}}
    with dg.instance_for_test(temp_dir=str(home), overrides=overrides) as instance:
        instance.add_dynamic_partitions("customers", [CUSTOMER])
        yield instance


def _run(instance: dg.DagsterInstance) -> dg.ExecuteJobResult:
    with dg.execute_job(
        dg.reconstructable(forecast_job),
        instance=instance,
        tags={"dagster/partition": CUSTOMER},
        asset_selection=RAW_AND_PREPROCESSED,
        raise_on_error=False,
    ) as result:
        # Read what the assertions need before the result's context closes.
        result.all_events  # noqa: B018
        return result


def test_a_run_executes_every_step_in_its_worker_and_holds_a_pool_slot(pool_instance, store):
    land(store, [CUSTOMER], days=35)
    result = _run(pool_instance)
    assert result.success
    started = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_START]
    assert {e.step_key for e in started} == {"landing__raw_load", "preprocessed__load"}
    # execute_job runs the run worker here: every step ran in this very process.
    assert {e.pid for e in started} == {os.getpid()}
    assert not [e for e in result.all_events if e.event_type_value == "STEP_WORKER_STARTED"]
    # The preprocessing step claimed a slot of its pool (creating it with the default limit),
    # and gave it back when it ended.
    info = pool_instance.event_log_storage.get_concurrency_info(PROCESSING_POOL)
    assert info.slot_count == 1
    assert info.claimed_slots == []


def test_a_failing_step_fails_the_run_with_its_reason(pool_instance, store):
    # Nothing landed for the customer: validating its raw files fails.
    result = _run(pool_instance)
    assert not result.success
    run = pool_instance.get_run_by_id(result.run_id)
    assert run is not None and run.status == dg.DagsterRunStatus.FAILURE
    (failure,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert failure.step_key == "landing__raw_load"
    assert f"customer '{CUSTOMER}': no raw files under" in failure.step_failure_data.error.message
    # The steps after it never start.
    assert [e.step_key for e in result.all_events if e.is_step_start] == ["landing__raw_load"]
