"""The one place that decides which environment this code location runs in.

``FORECAST_ENV`` selects it: ``local`` (the default: jobs run as local processes, objects live
under the data home, the database is a SQLite file) or ``sagemaker`` (jobs run on SageMaker,
objects on S3, the database is PostgreSQL; configured by the variables in ``.env.example``). Nothing else reads that variable;
``forecast_assets.definitions`` asks :func:`current_environment` and picks resources to match.
"""

from __future__ import annotations

import os
from typing import Literal, cast

Environment = Literal["local", "sagemaker"]
ENVIRONMENTS: tuple[Environment, ...] = ("local", "sagemaker")
ENV_VAR = "FORECAST_ENV"


def current_environment() -> Environment:
    value = os.environ.get(ENV_VAR, "local").strip().lower() or "local"
    if value not in ENVIRONMENTS:
        raise ValueError(f"{ENV_VAR}={value!r} is not one of {', '.join(ENVIRONMENTS)}")
    return cast(Environment, value)
