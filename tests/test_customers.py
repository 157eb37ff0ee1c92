"""One rule for customer ids, and the command that adds customers to the partition set."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from forecast_assets.customers import (
    CUSTOMER_ID_PATTERN,
    MAX_CUSTOMER_ID_LENGTH,
    InvalidCustomerIdError,
    main,
    validate_customer_id,
)
from forecast_assets.partitions import customers_partitions_def

RULE = "use 1-32 lowercase letters, digits and hyphens, starting and ending with a letter or digit"


@pytest.mark.parametrize(
    "value",
    ["a", "7", "a-1", "acme", "acme-energy-2", "a--b", "0" * 32, "x" + "-" * 30 + "y"],
)
def test_valid_ids(value: str):
    assert validate_customer_id(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "Acme",
        "ACME",
        "acme_energy",
        "-acme",
        "acme-",
        "-",
        "a" * 33,
        "",
        "acme/energy",
        "..",
        "../acme",
        "a..b",
        "acme energy",
        "acme\n",
        "ä",
    ],
)
def test_invalid_ids_state_the_rule(value: str):
    with pytest.raises(InvalidCustomerIdError) as caught:
        validate_customer_id(value)
    assert str(caught.value) == f"invalid customer id {value!r}: {RULE}"
    assert isinstance(caught.value, ValueError)


def test_non_strings_are_invalid():
    with pytest.raises(InvalidCustomerIdError, match="invalid customer id 12"):
        validate_customer_id(12)  # type: ignore[arg-type]


def test_length_limit_matches_the_pattern():
    assert MAX_CUSTOMER_ID_LENGTH == 32
    assert CUSTOMER_ID_PATTERN.match("a" * 32)
    assert not CUSTOMER_ID_PATTERN.match("a" * 33)


# The command -----------------------------------------------------------------------------------


@pytest.fixture
def dagster_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def _partitions(home: Path) -> list[str]:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return list(instance.get_dynamic_partitions(customers_partitions_def.name or ""))


def test_add_then_list(dagster_home: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["list"]) == 0
    assert capsys.readouterr().out == ""

    assert main(["add", "a-1", "b-2"]) == 0
    assert capsys.readouterr().out == "add: a-1, b-2\n"

    assert main(["list"]) == 0
    assert capsys.readouterr().out == "a-1\nb-2\n"
    assert _partitions(dagster_home) == ["a-1", "b-2"]


def test_adding_again_does_not_duplicate(dagster_home: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["add", "a-1"]) == 0
    assert main(["add", "a-1", "c-3"]) == 0
    capsys.readouterr()
    assert main(["list"]) == 0
    assert capsys.readouterr().out == "a-1\nc-3\n"


def test_remove(dagster_home: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["add", "a-1", "b-2", "c-3"]) == 0
    assert main(["remove", "b-2"]) == 0
    assert capsys.readouterr().out == "add: a-1, b-2, c-3\nremove: b-2\n"
    assert _partitions(dagster_home) == ["a-1", "c-3"]


def test_invalid_id_is_refused_and_nothing_is_added(
    dagster_home: Path, capsys: pytest.CaptureFixture[str]
):
    assert main(["add", "Bad_Id"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"invalid customer id 'Bad_Id': {RULE}\n"
    assert _partitions(dagster_home) == []

    # One bad id in a batch: none of the batch is added.
    assert main(["add", "good-1", "Bad_Id", "good-2"]) == 2
    assert _partitions(dagster_home) == []
    assert main(["list"]) == 0
    assert capsys.readouterr().out == ""


def test_unknown_action_is_a_usage_error(dagster_home: Path, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exited:
        main(["purge", "a-1"])
    assert exited.value.code == 2
    assert "invalid choice: 'purge'" in capsys.readouterr().err
    assert _partitions(dagster_home) == []


def test_remove_takes_a_key_the_rule_would_refuse(
    dagster_home: Path, capsys: pytest.CaptureFixture[str]
):
    """The UI's "Add partition" applies no rule, so a bad key can get into the set; the command
    must be able to take it out again, as the UI's "Delete partitions" can."""
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        instance.add_dynamic_partitions(customers_partitions_def.name or "", ["Bad_Id", "good-1"])
    assert main(["remove", "Bad_Id"]) == 0
    assert capsys.readouterr().out == "remove: Bad_Id\n"
    assert _partitions(dagster_home) == ["good-1"]


def test_removing_a_key_not_in_the_set_fails_naming_it_and_removes_nothing(
    dagster_home: Path, capsys: pytest.CaptureFixture[str]
):
    assert main(["add", "a-1", "b-2"]) == 0
    capsys.readouterr()
    assert main(["remove", "never-added"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "not in the 'customers' partition set, nothing removed: 'never-added'\n"
    )
    # One missing key in a batch: the batch is refused as a whole.
    assert main(["remove", "a-1", "never-added", "Nor_This"]) == 1
    assert "'never-added', 'Nor_This'" in capsys.readouterr().err
    assert _partitions(dagster_home) == ["a-1", "b-2"]
