"""The team stack: PostgreSQL, an MLflow tracking server, a Prefect server + work pool + worker, and a
Dask scheduler + workers, started as plain processes by ``fkp stack up`` and stopped by ``fkp stack down``.

One module per service kind builds that service's command line and health check; :mod:`.supervisor`
starts, records, checks and stops processes; :mod:`.commands` puts them in order. Nothing here imports
TensorFlow, Prefect or MLflow: every service is a separate program, so the stack starts quickly and a
crash in one service never takes the command down with it.
"""
