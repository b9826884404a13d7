"""A throwaway PostgreSQL cluster in the state folder, with one database per server (mlflow, prefect).

Debian's PostgreSQL binaries (``/usr/lib/postgresql/<version>/bin``, or ``$FKP_PG_BIN``) run the
cluster; no system service is touched. PostgreSQL refuses to run as root, so as root the cluster
belongs to the ``postgres`` user. It listens on TCP only (no Unix socket to collide with another
cluster) and asks for a password (generated once, kept in the state folder, mode 0600).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
from pathlib import Path
from urllib.parse import quote

from fkp.orchestration.stack.config import StackConfig
from fkp.orchestration.stack.supervisor import Service, StackError, run_once

DATABASES = ("mlflow", "prefect")
SUPERUSER = "fkp"
SYSTEM_USER = "postgres"  # who owns the cluster when fkp runs as root


def bin_dir() -> Path:
    """The folder with ``initdb`` and ``postgres``: ``$FKP_PG_BIN``, else Debian's newest, else PATH."""
    if env := os.environ.get("FKP_PG_BIN"):
        return Path(env)
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if debian:
        return debian[-1].parent
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise StackError(
        "PostgreSQL not found: install it (Debian: apt-get install -y postgresql) or set FKP_PG_BIN"
    )


def data_dir(config: StackConfig) -> Path:
    return config.state_dir / "postgres" / "data"


def _password_file(config: StackConfig) -> Path:
    return config.state_dir / "postgres" / "password"


def password(config: StackConfig) -> str:
    return _password_file(config).read_text(encoding="utf-8").strip()


def _run_as() -> str | None:
    return SYSTEM_USER if os.geteuid() == 0 else None


def ensure_cluster(config: StackConfig) -> None:
    """Create the cluster once (``initdb``); later ``up``s reuse it, so runs and models persist."""
    data = data_dir(config)
    if (data / "PG_VERSION").is_file():
        return
    pwfile = _password_file(config)
    data.mkdir(parents=True, exist_ok=True)
    pwfile.write_text(secrets.token_urlsafe(24) + "\n", encoding="utf-8")
    os.chmod(pwfile, 0o600)
    os.chmod(data, 0o700)
    user = _run_as()
    if user:
        for path in (data, pwfile):
            shutil.chown(path, user, user)
    try:
        run_once(
            [
                str(bin_dir() / "initdb"),
                "-D",
                str(data),
                "-U",
                SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--no-locale",
            ],
            what=f"initdb {data}",
            user=user,
            group=user,
        )
    except StackError as error:
        shutil.rmtree(data, ignore_errors=True)
        hint = (
            f" (the {user} user must be able to reach {data}: pick a --state-dir it can read)" if user else ""
        )
        raise StackError(f"{error}{hint}") from None


def service(config: StackConfig) -> Service:
    host = config.host
    port = config.postgres_port
    return Service(
        name="postgres",
        argv=[
            str(bin_dir() / "postgres"),
            "-D",
            str(data_dir(config)),
            "-h",
            host,
            "-p",
            str(port),
            "-c",
            "unix_socket_directories=",
        ],
        healthy=lambda: _ready(config),
        url=f"postgresql://{config.client_host}:{port}",
        user=_run_as(),
        stop_signal=signal.SIGINT,  # "fast" shutdown: end sessions, checkpoint, exit
        signal_group=False,
        start_timeout=60,
    )


def _client_env(config: StackConfig) -> dict[str, str]:
    return {"PGPASSWORD": password(config), "PGCONNECT_TIMEOUT": "3"}


def _ready(config: StackConfig) -> bool:
    try:
        run_once(
            [str(bin_dir() / "pg_isready"), "-q", "-h", config.client_host, "-p", str(config.postgres_port)],
            what="pg_isready",
        )
    except StackError:
        return False
    return True


def ensure_databases(config: StackConfig) -> None:
    """Create the ``mlflow`` and ``prefect`` databases if they do not exist yet."""
    common = ["-h", config.client_host, "-p", str(config.postgres_port), "-U", SUPERUSER]
    env = _client_env(config)
    listed = run_once(
        [str(bin_dir() / "psql"), *common, "-d", "postgres", "-tAc", "SELECT datname FROM pg_database"],
        env=env,
        what="listing the PostgreSQL databases",
    )
    existing = set(listed.split())
    for name in DATABASES:
        if name not in existing:
            run_once([str(bin_dir() / "createdb"), *common, name], env=env, what=f"createdb {name}")


def uri(config: StackConfig, database: str, driver: str = "postgresql") -> str:
    """The SQLAlchemy URL of ``database`` (``postgresql+asyncpg`` for Prefect's async server)."""
    return (
        f"{driver}://{SUPERUSER}:{quote(password(config), safe='')}"
        f"@{config.client_host}:{config.postgres_port}/{database}"
    )
