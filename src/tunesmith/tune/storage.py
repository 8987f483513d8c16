"""Where a study lives: SQLite in the run's work area, or a shared RDB (PostgreSQL) for many
workers on many machines, with heartbeats and retries of trials whose worker died."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

from tunesmith.errors import ConfigError
from tunesmith.explain import connection_problem
from tunesmith.rundir import RunDir


def open_storage(cfg: Any, run_dir: RunDir, url: str | None) -> Any:
    """The Optuna RDB storage: the recipe's or the given URL, else SQLite in the run's work area."""
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    url = url or cfg.storage or f"sqlite:///{run_dir.study_db.resolve()}"
    run_dir.work.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings(), _schema_lock(url):  # the heartbeat callback is experimental
            warnings.simplefilter("ignore")
            return RDBStorage(url, heartbeat_interval=cfg.heartbeat_seconds,
                              grace_period=2 * cfg.heartbeat_seconds,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                                  max_retry=cfg.retries))
    except Exception as error:  # SQLAlchemy, driver and Optuna errors all mean "cannot use it"
        shown = url.split("@")[-1]  # never the credentials
        raise ConfigError(f"tune storage ...@{shown}: cannot connect ({connection_problem(error)}). "
                          "Check the URL, that the server runs, and the driver "
                          "(pip install 'tunesmith[distributed]' for PostgreSQL).") from None


SCHEMA_LOCK_KEY = 0x7475_6E65  # "tune": one PostgreSQL advisory lock id for schema creation


@contextlib.contextmanager
def _schema_lock(url: str) -> Iterator[None]:
    """Workers starting together on an empty PostgreSQL database would each create Optuna's
    tables and race (UniqueViolation on pg_type); an advisory lock lets one create them while
    the others wait, then find them. SQLite is one file per run and needs none."""
    if not url.startswith("postgresql"):
        yield
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": SCHEMA_LOCK_KEY})
    finally:
        engine.dispose()
