"""Where each customer's data lives in the object store. Asset keys mirror these prefixes.

landing/<customer>/...                    raw meter files, as delivered (never modified)
<dataset>/<customer>/current.json         the published version of a dataset (see publication.py)
manifests/<customer>/<version>/raw_load.json      what raw_load validated: files, sizes, SHA-256
manifests/<customer>/<version>/raw_load.manifest  the same files as a SageMaker ManifestFile
preprocessed/<customer>/<version>/load.parquet    regular load table (+ devices.json, quality.json,
                                                  and weather.parquet when the customer has weather)
models/<customer>/<job>/output/model.tar.gz  one per training job, as SageMaker lays it out
forecasts/<customer>/<version>/forecast.parquet   a forecast
jobs/<job>/output/<name>/                 where a job's outputs land before promotion
jobs/<job>/input/<name>/<customer>/...    a batch job's inputs, one folder per customer
code/<job>/<sha256>/                      the job scripts, by content
"""

from __future__ import annotations

from resources.storage import ObjectStore

PREPROCESSED_FILES = ("load.parquet", "devices.json", "quality.json")
# Published beside them only when raw_load validated weather files for the customer.
WEATHER_FILE = "weather.parquet"


def preprocessed_files(manifest: dict) -> tuple[str, ...]:
    """The files a preprocessed version has, given the raw_load manifest it was made from."""
    return (
        (*PREPROCESSED_FILES, WEATHER_FILE) if manifest.get("weather_files") else PREPROCESSED_FILES
    )


RAW_MANIFEST = "raw_load.json"
RAW_SAGEMAKER_MANIFEST = "raw_load.manifest"
FORECAST_FILE = "forecast.parquet"


def landing_root(store: ObjectStore) -> str:
    return store.uri("landing") + "/"


def landing_prefix(store: ObjectStore, customer: str) -> str:
    return store.uri("landing", customer) + "/"


def models_prefix(store: ObjectStore, customer: str) -> str:
    return store.uri("models", customer)


def model_artifact(store: ObjectStore, customer: str, job_name: str) -> str:
    return store.uri("models", customer, job_name, "output", "model.tar.gz")


def checkpoints(store: ObjectStore, customer: str) -> str:
    return store.uri("checkpoints", customer)


def job_output(store: ObjectStore, job_name: str, output: str) -> str:
    return store.uri("jobs", job_name, "output", output)


def job_input(store: ObjectStore, job_name: str, name: str) -> str:
    return store.uri("jobs", job_name, "input", name)
