"""Orchestration glue that only the flows and ``fkp stack`` use: DVC pipeline runs, Prefect helpers."""
