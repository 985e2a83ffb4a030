"""Dagster resources: places (lakehouse, landing zone) and services (models, encoders)."""
