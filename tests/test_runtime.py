"""The job side of the SageMaker container contract: paths, hyperparameters, failure reasons."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forecast_core import runtime


@pytest.fixture(autouse=True)
def _no_pipes(monkeypatch):
    monkeypatch.delenv("DAGSTER_PIPES_CONTEXT", raising=False)
    monkeypatch.delenv("DAGSTER_PIPES_MESSAGES", raising=False)


def test_paths_follow_sm_variables_and_fall_back_to_opt_ml(monkeypatch, tmp_path):
    for name in (
        "SM_OUTPUT_DIR",
        "SM_MODEL_DIR",
        "SM_OUTPUT_DATA_DIR",
        "SM_CHANNEL_TRAIN",
        "SM_INPUT_CONFIG_DIR",
    ):
        monkeypatch.delenv(name, raising=False)
    assert runtime.output_dir() == Path("/opt/ml/output")
    assert runtime.model_dir() == Path("/opt/ml/model")
    assert runtime.output_data_dir() == Path("/opt/ml/output/data")
    assert runtime.channel_dir("train") == Path("/opt/ml/input/data/train")
    assert runtime.input_config_dir() == Path("/opt/ml/input/config")

    monkeypatch.setenv("SM_MODEL_DIR", str(tmp_path / "m"))
    monkeypatch.setenv("SM_CHANNEL_TRAIN", str(tmp_path / "t"))
    assert runtime.model_dir() == tmp_path / "m"
    assert runtime.channel_dir("train") == tmp_path / "t"


def test_hyperparameters_decode_json_encoded_strings(monkeypatch, tmp_path):
    (tmp_path / "hyperparameters.json").write_text(
        json.dumps(
            {
                "horizon_hours": "24",
                "learning_rate": "0.05",
                "refit_full": "true",
                "timezone": "Europe/Berlin",  # not JSON: stays a string
                "quoted": '"DE"',
                "lags": "[1, 2]",
                "nested": '{"a": null}',
                "customer_id": "007",  # not valid JSON either
                "already_a_number": 3,  # the local launcher may write real JSON values
            }
        )
    )
    monkeypatch.setenv("SM_INPUT_CONFIG_DIR", str(tmp_path))
    assert runtime.hyperparameters() == {
        "horizon_hours": 24,
        "learning_rate": 0.05,
        "refit_full": True,
        "timezone": "Europe/Berlin",
        "quoted": "DE",
        "lags": [1, 2],
        "nested": {"a": None},
        "customer_id": "007",
        "already_a_number": 3,
    }


def test_hyperparameters_without_a_file_are_empty(monkeypatch, tmp_path):
    monkeypatch.setenv("SM_INPUT_CONFIG_DIR", str(tmp_path / "absent"))
    assert runtime.hyperparameters() == {}


@pytest.mark.parametrize(("kind", "name"), [("training", "failure"), ("processing", "message")])
def test_write_failure_file_name_by_job_kind(monkeypatch, tmp_path, kind, name):
    out = tmp_path / "deep" / "output"
    monkeypatch.setenv("SM_OUTPUT_DIR", str(out))
    runtime.write_failure(kind, "InputError: no data")
    assert sorted(p.name for p in out.iterdir()) == [name]
    assert (out / name).read_text() == "InputError: no data"


def test_write_failure_truncates_to_1024_bytes(monkeypatch, tmp_path):
    monkeypatch.setenv("SM_OUTPUT_DIR", str(tmp_path))
    runtime.write_failure("training", "x" * 1000 + "y" * 1000)
    data = (tmp_path / "failure").read_bytes()
    assert len(data) == 1024
    assert data == b"x" * 1000 + b"y" * 24


def test_write_failure_truncation_keeps_valid_utf8(monkeypatch, tmp_path):
    monkeypatch.setenv("SM_OUTPUT_DIR", str(tmp_path))
    # 1 + 2 * 600 bytes: the 1024-byte cut falls inside an 'ä'.
    runtime.write_failure("processing", "a" + "ä" * 600)
    data = (tmp_path / "message").read_bytes()
    assert len(data) <= 1024
    assert data.decode("utf-8") == "a" + "ä" * 511


def test_run_job_success_passes_a_stdout_report(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SM_OUTPUT_DIR", str(tmp_path))
    seen = []

    def main(report):
        seen.append(type(report))
        report.log("hello")
        report.materialization({"rows": 3, "b": "x"})

    runtime.run_job("training", main)
    assert seen == [runtime.Report]
    assert capsys.readouterr().out == 'hello\nreport: {"b": "x", "rows": 3}\n'
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("kind", "name"), [("training", "failure"), ("processing", "message")])
def test_run_job_writes_the_reason_and_exits_1(monkeypatch, tmp_path, capsys, kind, name):
    monkeypatch.setenv("SM_OUTPUT_DIR", str(tmp_path))

    def main(report):
        raise ValueError("customer 'c1': no load data")

    with pytest.raises(SystemExit) as info:
        runtime.run_job(kind, main)
    assert info.value.code == 1
    assert (tmp_path / name).read_text() == "ValueError: customer 'c1': no load data"
    assert "Traceback" in capsys.readouterr().err


class FakePipes:
    """Records what a PipesReport sends, as dagster_pipes' context would receive it."""

    def __init__(self):
        self.sent: list[tuple[str, object]] = []

    def report_asset_materialization(self, metadata):
        self.sent.append(("materialization", metadata))

    def report_custom_message(self, payload):
        json.dumps(payload)  # Pipes sends it as JSON
        self.sent.append(("custom", payload))


def test_pipes_report_without_a_customer_materializes_the_asset(capsys):
    pipes = FakePipes()
    runtime.PipesReport(pipes).materialization({"rows": 3})
    assert pipes.sent == [("materialization", {"rows": 3})]
    assert capsys.readouterr().out == 'report: {"rows": 3}\n'


def test_pipes_report_with_a_customer_sends_a_custom_message(capsys):
    pipes = FakePipes()
    report = runtime.PipesReport(pipes)
    report.materialization({"rows": 3, "start": "2025-11-01"}, customer="a")
    report.customer_failure("b", "customer 'b', file 'x.csv': broken")
    assert pipes.sent == [
        ("custom", {"customer_id": "a", "metadata": {"rows": 3, "start": "2025-11-01"}}),
        ("custom", {"customer_id": "b", "error": "customer 'b', file 'x.csv': broken"}),
    ]
    assert capsys.readouterr().out == (
        'report[a]: {"rows": 3, "start": "2025-11-01"}\n'
        "failed[b]: customer 'b', file 'x.csv': broken\n"
    )


def test_run_job_writes_a_job_failed_message_as_it_is(monkeypatch, tmp_path):
    monkeypatch.setenv("SM_OUTPUT_DIR", str(tmp_path))

    def main(report):
        raise runtime.JobFailed("1 of 2 customers failed: customer 'b': no data")

    with pytest.raises(SystemExit):
        runtime.run_job("processing", main)
    assert (tmp_path / "message").read_text() == "1 of 2 customers failed: customer 'b': no data"
