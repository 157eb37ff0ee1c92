"""Shared Dagster resources: object storage, the database, and the job launcher.

Each is an interface with interchangeable implementations; ``forecast_assets.definitions`` picks
one per environment.
"""
