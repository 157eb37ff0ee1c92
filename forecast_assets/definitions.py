"""The only place that builds the code location's ``Definitions``.

Resources are chosen here, once, by environment (see ``forecast_assets.environment``): every
asset asks for ``store``, ``launcher`` and ``database`` by name and never knows which
implementation it got.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from forecast_assets.assets import ALL_ASSETS
from forecast_assets.environment import Environment, current_environment
from forecast_assets.jobs import ALL_JOBS
from resources.database import Database
from resources.jobs import LocalJobLauncher
from resources.storage import LocalObjectStore


def resources_for(environment: Environment) -> dict[str, Any]:
    if environment == "local":
        store = LocalObjectStore()
        return {
            "store": store,
            "launcher": LocalJobLauncher(store=store),
            "database": Database(),
        }
    raise NotImplementedError(
        f"the {environment!r} environment (SageMaker, S3, PostgreSQL) is not built yet; "
        "unset FORECAST_ENV to run locally"
    )


def build_definitions(environment: Environment | None = None) -> dg.Definitions:
    return dg.Definitions(
        assets=ALL_ASSETS,
        jobs=ALL_JOBS,
        resources=resources_for(environment or current_environment()),
    )


defs = build_definitions()
