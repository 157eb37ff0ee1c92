"""landing/raw_load refuses what no meter can report, skips what is not a meter file, and reports
meters too short to use; the preprocessing job reports the devices it leaves out.

Each asset test materializes raw_load alone, in process, and checks that the raw files are
unchanged (by hash) and that an error names the customer, the file and the problem.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from argparse import Namespace
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from forecast_assets.assets import raw
from forecast_assets.landing import classify
from forecast_core.runtime import Report
from resources.storage import LocalObjectStore, S3ObjectStore
from tests.conftest import land
from tests.test_assets import CUSTOMER, RAW, landing_snapshot, materialize, step_errors

HEADER = "timestamp_utc,meter_id,energy_wh\n"


def gridsense(
    device: str = "m1",
    start: str = "2025-06-01T00:00:00Z",
    n: int = 200,
    wh: float = 375.3,
    step: str = "15min",
) -> bytes:
    """A gridsense file: ``n`` readings of ``wh`` Wh each, ``step`` apart."""
    times = pd.date_range(start, periods=n, freq=step)
    rows = "".join(f"{t.strftime('%Y-%m-%dT%H:%M:%SZ')},{device},{wh}\n" for t in times)
    return (HEADER + rows).encode()


def raw_metadata(result: dg.ExecuteInProcessResult) -> dict:
    (materialization,) = result.asset_materializations_for_node("landing__raw_load")
    return materialization.metadata


def assert_refused(
    result: dg.ExecuteInProcessResult, uri: str, *problems: str, customer: str = CUSTOMER
) -> str:
    """The step failed blaming only ``uri``, for each of ``problems``, and recorded nothing."""
    assert not result.success
    message = step_errors(result)
    assert f"customer '{customer}', file '{uri}': " in message, message
    for problem in problems:
        assert problem in message, message
    assert "1 of " in message, message
    assert not result.asset_materializations_for_node("landing__raw_load")
    return message


def run_with_extra_file(instance, local_resources, store, name, data, run_config=None):
    """Demo files plus one more; returns the result and its URI, having checked that no raw file
    changed."""
    land(store, [CUSTOMER], days=5)
    uri = store.uri("landing", CUSTOMER, "extra", name)
    store.write_bytes(uri, data)
    before = landing_snapshot(store, CUSTOMER)
    result = materialize(instance, local_resources, CUSTOMER, [RAW], run_config)
    assert landing_snapshot(store, CUSTOMER) == before
    return result, uri


def raw_config(**fields) -> dict:
    return {"ops": {"landing__raw_load": {"config": fields}}}


# --- implausible values ------------------------------------------------------------------------


def test_a_meter_scaled_by_1e27_is_refused(instance, local_resources, store):
    result, uri = run_with_extra_file(
        instance, local_resources, store, "scaled.csv", gridsense(wh=375.3e27)
    )
    message = assert_refused(result, uri, "implausible value on line(s) 2, 3, 4, 5, 6 and 195 more")
    assert "kW, above the 100000 kW one meter can plausibly draw (max_interval_power_kw)" in message


def test_one_reading_above_the_interval_bound_is_refused_naming_its_line(
    instance, local_resources, store
):
    data = gridsense(n=50).decode().splitlines(keepends=True)
    # 30,000 kWh in 15 minutes is 120 MW: above the 100 MW default for one reading.
    data[11] = data[11].replace(",375.3", ",30000000")
    result, uri = run_with_extra_file(
        instance, local_resources, store, "spike.csv", "".join(data).encode()
    )
    assert_refused(result, uri, "implausible value on line(s) 12:", "120000 kW")


def test_a_meter_level_above_the_median_bound_is_refused_unless_configured(
    instance, local_resources, store
):
    # 6,000 kWh every 15 minutes is 24 MW, all the time: under the per-reading bound, over the
    # 20 MW a whole meter plausibly draws most of the time (Wh written as kWh looks like this).
    data = gridsense(device="big", wh=6_000_000)
    result, uri = run_with_extra_file(instance, local_resources, store, "level.csv", data)
    assert_refused(result, uri, "device 'big' has a median power of 24000 kW", "max_median_power")

    result = materialize(
        instance, local_resources, CUSTOMER, [RAW], raw_config(max_median_power_kw=30_000)
    )
    assert result.success, step_errors(result)


# --- timestamps --------------------------------------------------------------------------------


def test_readings_before_the_earliest_year_are_refused(instance, local_resources, store):
    data = gridsense(start="1999-12-31T23:00:00Z", n=8)
    result, uri = run_with_extra_file(instance, local_resources, store, "y2k.csv", data)
    assert_refused(
        result, uri, "timestamp 1999-12-31T23:00:00+00:00 is before 2000-01-01", "line(s) 2, 3"
    )
    result = materialize(instance, local_resources, CUSTOMER, [RAW], raw_config(earliest_year=1999))
    assert result.success, step_errors(result)


def test_readings_in_the_future_beyond_the_tolerance_are_refused(
    instance, local_resources, store, monkeypatch: pytest.MonkeyPatch
):
    clock = datetime(2025, 11, 3, 12, 0, tzinfo=UTC)
    monkeypatch.setattr(raw, "now", lambda: clock)
    land(store, [CUSTOMER], days=5)
    # Readings start up to 45 minutes after "now": within the default 60 minutes.
    ahead = gridsense(device="ahead", start="2025-11-03T10:00:00Z", n=12)
    store.write_bytes(store.uri("landing", CUSTOMER, "ahead.csv"), ahead)
    result = materialize(instance, local_resources, CUSTOMER, [RAW])
    assert result.success, step_errors(result)

    late = gridsense(device="late", start="2025-11-03T12:00:00Z", n=8)  # up to 13:45
    uri = store.uri("landing", CUSTOMER, "late.csv")
    store.write_bytes(uri, late)
    before = landing_snapshot(store, CUSTOMER)
    result = materialize(instance, local_resources, CUSTOMER, [RAW])
    assert_refused(
        result,
        uri,
        "timestamp 2025-11-03T13:15:00+00:00 is in the future (later than "
        "2025-11-03T13:00:00+00:00",
        "line(s) 7, 8, 9",
    )
    assert landing_snapshot(store, CUSTOMER) == before
    result = materialize(
        instance, local_resources, CUSTOMER, [RAW], raw_config(future_tolerance_minutes=120)
    )
    assert result.success, step_errors(result)


# --- device ids and cut files ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device", "problem"),
    [
        ("x" * 10_000, "is 10000 characters long, more than the 128 the device registry holds"),
        ("meter\x00one", "contains a control character (U+0000)"),
        ("meter\u200bone", "contains an invisible format character (U+200B)"),
    ],
    ids=["10000-characters", "nul", "zero-width-space"],
)
def test_device_ids_the_registry_cannot_hold_are_refused(
    device, problem, instance, local_resources, store
):
    data = gridsense(device=device, n=8)
    result, uri = run_with_extra_file(instance, local_resources, store, "ids.csv", data)
    message = assert_refused(result, uri, problem, "in column 'meter_id'", "(line(s) 2, 3, 4")
    assert len(message) < 2_000  # the id is quoted by its start, not in full


def test_a_file_cut_inside_its_last_number_is_refused(instance, local_resources, store):
    # The meter wrote 375.3; the delivery stopped after the '3'.
    data = gridsense(n=8)[: -len("75.3\n")]
    assert data.endswith(b",3")
    result, uri = run_with_extra_file(instance, local_resources, store, "cut.csv", data)
    assert_refused(
        result,
        uri,
        "its last line (line 9) does not end with a line break",
        "cut off",
        "re-deliver",
    )


# --- what is not a meter file -------------------------------------------------------------------

NOT_METER_FILES = {
    ".DS_Store": "hidden",
    "_SUCCESS": "job marker",
    "upload.tmp": "temporary file",
    "~$readings.xlsx": "Office lock file",
    "jan.csv.part": "partial download",
    "jan.csv.crdownload": "partial Chrome download",
    ".snapshots/jan.csv": "hidden ('.snapshots'",
    "sub/.jan.csv.swp": "hidden",
}


def test_files_that_are_not_meter_files_are_skipped_and_listed(instance, local_resources, store):
    land(store, [CUSTOMER], days=5)
    meter_files = set(landing_snapshot(store, CUSTOMER))
    for name in NOT_METER_FILES:
        store.write_bytes(store.uri("landing", CUSTOMER, name), b"\x00 not a meter file")
    before = landing_snapshot(store, CUSTOMER)
    result = materialize(instance, local_resources, CUSTOMER, [RAW])
    assert result.success, step_errors(result)
    assert landing_snapshot(store, CUSTOMER) == before

    meta = raw_metadata(result)
    assert meta["files"].value == len(meter_files)
    assert meta["skipped"].value == len(NOT_METER_FILES)
    reasons = {r.data["file"]: r.data["reason"] for r in meta["skipped_files"].value.records}
    assert set(reasons) == set(NOT_METER_FILES)
    for name, why in NOT_METER_FILES.items():
        assert why in reasons[name]


def test_a_customer_with_only_skipped_objects_has_no_raw_files(instance, local_resources, store):
    store.write_bytes(store.uri("landing", "acme", ".DS_Store"), b"x")
    result = materialize(instance, local_resources, "acme", [RAW])
    assert not result.success
    message = step_errors(result)
    assert "customer 'acme': no raw files under s3://forecast-assets/landing/acme/" in message
    assert "(1 object(s) skipped: '.DS_Store': hidden" in message


def s3_snapshot(store: S3ObjectStore) -> dict[str, str]:
    """Every object in the bucket, folder markers included (read_bytes refuses those)."""
    client = store.client
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=store.bucket).get("Contents", [])]
    return {
        key: hashlib.sha256(
            client.get_object(Bucket=store.bucket, Key=key)["Body"].read()
        ).hexdigest()
        for key in keys
        if key.startswith("landing/")
    }


def materialize_on_s3(instance, store: S3ObjectStore, customer: str):
    instance.add_dynamic_partitions("customers", [customer])
    return dg.materialize(
        [raw.raw_load],
        partition_key=customer,
        resources={"store": store},
        instance=instance,
        raise_on_error=False,
    )


def test_s3_folder_markers_are_skipped_and_unmappable_keys_fail_naming_them(
    instance, s3_store: S3ObjectStore
):
    client, bucket = s3_store.client, s3_store.bucket
    client.put_object(Bucket=bucket, Key="landing/acme/jan.csv", Body=gridsense())
    # What the S3 console's "Create folder" writes.
    for marker in ("landing/acme/", "landing/acme/sub/"):
        client.put_object(Bucket=bucket, Key=marker, Body=b"")
    before = s3_snapshot(s3_store)
    result = materialize_on_s3(instance, s3_store, "acme")
    assert result.success, step_errors(result)
    meta = raw_metadata(result)
    assert meta["files"].value == 1
    skipped = {r.data["file"]: r.data["reason"] for r in meta["skipped_files"].value.records}
    assert set(skipped) == {"", "sub/"}
    assert all(reason.startswith("folder marker") for reason in skipped.values())

    bad = ["landing/acme//double.csv", "landing/acme/./dot.csv", "landing/acme/sub/../up.csv"]
    for key in bad:
        client.put_object(Bucket=bucket, Key=key, Body=gridsense())
    before = s3_snapshot(s3_store)
    result = materialize_on_s3(instance, s3_store, "acme")
    assert not result.success
    message = step_errors(result)
    assert "3 of 4 raw file(s) cannot be used" in message
    for key in bad:
        assert (
            f"customer 'acme', file 's3://{bucket}/{key}': key has an empty, '.' or '..' path "
            "segment" in message
        )
    assert "Traceback" not in message
    assert s3_snapshot(s3_store) == before


# --- meters too short ---------------------------------------------------------------------------


def test_meters_too_short_are_listed_not_failed(instance, local_resources, store):
    land(store, [CUSTOMER], days=5)
    store.write_bytes(store.uri("landing", CUSTOMER, "a.csv"), gridsense(device="short", n=5))
    # The same readings delivered twice count once; another file adds three more.
    store.write_bytes(store.uri("landing", CUSTOMER, "b.csv"), gridsense(device="short", n=8))
    before = landing_snapshot(store, CUSTOMER)
    result = materialize(instance, local_resources, CUSTOMER, [RAW])
    assert result.success, step_errors(result)
    assert landing_snapshot(store, CUSTOMER) == before
    records = [r.data for r in raw_metadata(result)["meters_too_short"].value.records]
    assert [(r["device_id"], r["readings"], r["files"]) for r in records] == [("short", 8, 2)]
    assert "fewer than min_readings_per_meter (96)" in records[0]["reason"]

    result = materialize(
        instance, local_resources, CUSTOMER, [RAW], raw_config(min_readings_per_meter=8)
    )
    assert result.success, step_errors(result)
    assert not raw_metadata(result)["meters_too_short"].value.records


def test_validate_files_takes_its_clock_and_bounds_as_arguments(store: LocalObjectStore):
    store.write_bytes(store.uri("landing", "acme", "jan.csv"), gridsense(start="2030-01-01"))
    with pytest.raises(raw.RawFilesError, match="is in the future"):
        raw.validate_files(store, "acme")
    result = raw.validate_files(
        store, "acme", raw.RawLoadConfig(), at=datetime(2031, 1, 1, tzinfo=UTC)
    )
    assert [f["relative_path"] for f in result.files] == ["jan.csv"]
    assert result.skipped == [] and result.meters_too_short == []


# --- the one landing rule -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("relative", "kind"),
    [
        ("jan.csv", "file"),
        ("2025/01/jan.csv", "file"),
        ("jan", "file"),
        ("", "skip"),
        ("sub/", "skip"),
        (".DS_Store", "skip"),
        ("sub/.DS_Store", "skip"),
        (".git/config", "skip"),
        ("_SUCCESS", "skip"),
        ("Thumbs.db", "skip"),
        ("x.TMP", "skip"),
        ("~$book.xlsx", "skip"),
        ("jan.csv.part", "skip"),
        ("jan.csv.crdownload", "skip"),
        (".jan.csv.swp", "skip"),
        ("jan.csv~", "skip"),
        ("a//b.csv", "bad"),
        ("/b.csv", "bad"),
        ("./b.csv", "bad"),
        ("a/../b.csv", "bad"),
        ("..", "bad"),
    ],
)
def test_classify(relative: str, kind: str):
    key = classify(relative)
    assert key.kind == kind
    assert bool(key.reason) == (kind != "file")


# --- the preprocessing job reports devices it leaves out ----------------------------------------


def load_preprocess_script():
    path = Path(__file__).resolve().parents[1] / "containers/preprocessing/preprocess.py"
    spec = importlib.util.spec_from_file_location("preprocess_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_preprocessing_reports_devices_too_short_for_one_interval(tmp_path: Path):
    preprocess = load_preprocess_script()
    raw_dir, output = tmp_path / "raw", tmp_path / "out"
    raw_dir.mkdir()
    files = {
        "long.csv": gridsense(device="long", n=96),
        # Three quarter-hours never fill one hour: the device cannot be in an hourly table.
        "short.csv": gridsense(device="short", start="2025-06-01T00:15:00Z", n=3),
    }
    entries = []
    for name, data in files.items():
        (raw_dir / name).write_bytes(data)
        entries.append(
            {
                "relative_path": name,
                "uri": f"s3://b/landing/acme/{name}",
                "sha256": hashlib.sha256(data).hexdigest(),
                "vendor": "gridsense",
            }
        )
    manifest = tmp_path / "raw_load.json"
    manifest.write_text(json.dumps({"customer_id": "acme", "files": entries}))
    args = Namespace(interval="1h", max_fill_gap="1h")

    metadata = preprocess.preprocess(Report(), "acme", raw_dir, manifest, output, args)

    table = pd.read_parquet(output / "load.parquet")
    assert set(table["device_id"]) == {"long"}
    quality = json.loads((output / "quality.json").read_text())
    (dropped,) = quality["dropped_devices"]
    assert dropped["device_id"] == "short" and dropped["readings"] == 3
    assert "fill no complete 60-minute interval" in dropped["reason"]
    assert metadata["devices_dropped"] == 1
    assert metadata["dropped_devices"] == quality["dropped_devices"]
    assert "short" not in quality["native_interval_minutes"]
