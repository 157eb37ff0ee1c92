"""Shared fixtures: a private data home per test, local resources, a Dagster instance, demo
data, a throwaway PostgreSQL server started from the installed binaries, and a moto server
standing in for AWS."""

from __future__ import annotations

import hashlib
import os
import urllib.request
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from forecast_assets.demo import land_demo_files
from resources.database import Database
from resources.jobs import LocalJobLauncher
from resources.storage import LocalObjectStore, S3ObjectStore
from tests.postgres_server import free_port, pg_bindir, throwaway_postgres

warnings.filterwarnings("ignore", category=dg.PreviewWarning)
warnings.filterwarnings("ignore", category=dg.BetaWarning)

# A fixed end keeps test data identical from day to day.
TEST_END = pd.Timestamp("2025-11-03", tz="UTC")


@pytest.fixture
def data_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "data"
    monkeypatch.setenv("FORECAST_DATA_HOME", str(home))
    monkeypatch.delenv("FORECAST_DATABASE_URL", raising=False)
    monkeypatch.delenv("FORECAST_ENV", raising=False)
    return home


@pytest.fixture
def store(data_home: Path) -> LocalObjectStore:
    return LocalObjectStore()


@pytest.fixture
def local_resources(store: LocalObjectStore) -> dict:
    return {"store": store, "launcher": LocalJobLauncher(store=store), "database": Database()}


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as inst:
        yield inst


def land(store: LocalObjectStore, customers: list[str], days: int = 75) -> None:
    """Demo files for the named demo customers, ending at TEST_END."""
    land_demo_files(store, customers, days=days, end=TEST_END, seed=0)


# PostgreSQL ------------------------------------------------------------------------------------


# The helpers other test modules import from here.
_free_port = free_port


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server of our own on 127.0.0.1, stopped and deleted after the session."""
    bindir = pg_bindir()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail(
                "PostgreSQL server binaries are missing in CI (make postgres installs them)"
            )
        pytest.skip("PostgreSQL server binaries not found")
    with throwaway_postgres(bindir) as url:
        yield url


# AWS, as moto -----------------------------------------------------------------------------------

TEST_REGION = "eu-central-1"


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A moto server on 127.0.0.1 (S3, SageMaker, CloudWatch Logs, ...): its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, moto_server: str) -> Iterator[str]:
    """Fake credentials and the moto endpoint for every boto3 client; moto emptied first.

    Nothing from a developer's own AWS setup (profiles, config files, endpoints) can leak in.
    """
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", TEST_REGION)
    monkeypatch.setenv("AWS_REGION", TEST_REGION)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    reset = urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST")
    with urllib.request.urlopen(reset, timeout=30) as response:
        assert response.status == 200
    yield moto_server


@pytest.fixture
def make_bucket(aws_env: str) -> Callable[[], str]:
    """Creates a bucket with a name of its own in moto, and returns the name."""
    import boto3

    client = boto3.client("s3")

    def make() -> str:
        name = f"test-{uuid.uuid4().hex[:16]}"
        client.create_bucket(
            Bucket=name, CreateBucketConfiguration={"LocationConstraint": TEST_REGION}
        )
        return name

    return make


@pytest.fixture
def s3_store(make_bucket: Callable[[], str]) -> S3ObjectStore:
    """An S3ObjectStore on a fresh bucket in moto, configured only by the environment."""
    return S3ObjectStore(bucket=make_bucket())


def published_snapshot(store: LocalObjectStore, customer: str) -> dict[str, str]:
    """SHA-256 of every object a customer has published (manifests, tables, forecasts, models)
    and of its landed raw files: equal snapshots mean nothing visible changed."""
    snapshot = {}
    for dataset in ("landing", "manifests", "preprocessed", "forecasts", "models"):
        for obj in store.list_objects(store.uri(dataset, customer) + "/"):
            snapshot[obj.key] = hashlib.sha256(store.read_bytes(obj.uri)).hexdigest()
    return snapshot
