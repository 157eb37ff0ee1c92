"""Where each customer's data lives in the object store. Asset keys mirror these prefixes.

landing/<customer>/...                    raw meter files, as delivered (never modified)
manifests/<customer>/raw_load.json        what raw_load validated: files, sizes, SHA-256
manifests/<customer>/raw_load.manifest    the same files as a SageMaker ManifestFile
preprocessed/<customer>/load.parquet      regular load table (+ devices.json, quality.json)
models/<customer>/<job>/output/model.tar.gz  one per training job, as SageMaker lays it out
forecasts/<customer>/forecast.parquet     the latest forecast
jobs/<job>/output/<name>/                 where a job's outputs land before promotion
jobs/<job>/input/<name>/<customer>/...    a batch job's inputs, one folder per customer
code/<job>/<sha256>/                      the job scripts, by content
"""

from __future__ import annotations

from resources.storage import ObjectStore

PREPROCESSED_FILES = ("load.parquet", "devices.json", "quality.json")


def landing_root(store: ObjectStore) -> str:
    return store.uri("landing") + "/"


def landing_prefix(store: ObjectStore, customer: str) -> str:
    return store.uri("landing", customer) + "/"


def raw_manifest(store: ObjectStore, customer: str) -> str:
    return store.uri("manifests", customer, "raw_load.json")


def raw_sagemaker_manifest(store: ObjectStore, customer: str) -> str:
    return store.uri("manifests", customer, "raw_load.manifest")


def preprocessed(store: ObjectStore, customer: str, name: str = "load.parquet") -> str:
    return store.uri("preprocessed", customer, name)


def models_prefix(store: ObjectStore, customer: str) -> str:
    return store.uri("models", customer)


def model_artifact(store: ObjectStore, customer: str, job_name: str) -> str:
    return store.uri("models", customer, job_name, "output", "model.tar.gz")


def checkpoints(store: ObjectStore, customer: str) -> str:
    return store.uri("checkpoints", customer)


def forecast(store: ObjectStore, customer: str) -> str:
    return store.uri("forecasts", customer, "forecast.parquet")


def job_output(store: ObjectStore, job_name: str, output: str) -> str:
    return store.uri("jobs", job_name, "output", output)


def job_input(store: ObjectStore, job_name: str, name: str) -> str:
    return store.uri("jobs", job_name, "input", name)
