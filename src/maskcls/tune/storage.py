"""Where a study lives: Optuna's storages, and how a killed worker's trial is marked failed.

* default — an embedded SQLite file, ``DIR/study.db`` (one worker, or a few: SQLite locks the whole
  file for every write);
* ``journal`` or ``journal:PATH`` — Optuna's journal file storage (``DIR/study.journal`` by default):
  an append-only log with a file lock, made for many processes on one machine;
* an SQLAlchemy URL — ``postgresql://user:pass@host/db`` (or ``mysql+pymysql://…``): one database for
  workers on many machines.

A worker killed mid-trial (kill -9, a lost machine) leaves its trial RUNNING. For database
storages Optuna's heartbeat finds it: a running trial whose heartbeat is older than twice the
interval is marked FAIL when any worker starts its next trial. The journal storage has no
heartbeat, so each trial also records its host and process; a worker starting on that host marks
the trials of processes that no longer exist FAIL (:func:`fail_dead_local_trials`).
"""
from __future__ import annotations

import importlib.util
import logging
import os
import random
import socket
import time
import warnings
from pathlib import Path

import optuna
import psutil
from optuna.exceptions import ExperimentalWarning
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import TrialState

from ..errors import ConfigError

log = logging.getLogger(__name__)

DRIVERS = {"postgresql": "psycopg (pip install 'maskcls[postgres]')", "mysql": "pymysql (pip install pymysql; "
           "URL mysql+pymysql://…)"}


def storage_url(spec: str | None, study_dir: Path) -> str:
    """``--storage`` → a URL (``journal:PATH`` for the journal file); relative paths are made absolute."""
    if spec is None or spec == "sqlite":
        return f"sqlite:///{(study_dir / 'study.db').resolve()}"
    if spec == "journal":
        return f"journal:{(study_dir / 'study.journal').resolve()}"
    if spec.startswith("journal:"):
        return f"journal:{Path(spec.removeprefix('journal:')).expanduser().resolve()}"
    if "://" not in spec:
        raise ConfigError(f"--storage {spec!r}: give a database URL (sqlite:///study.db, postgresql://user:pass@host/db"
                          "), 'journal' (DIR/study.journal) or journal:PATH")
    if spec.startswith("postgresql://"):  # no driver named: the one installed (SQLAlchemy's default varies)
        return "postgresql+" + _postgres_driver() + spec.removeprefix("postgresql")
    return spec


def _postgres_driver() -> str:
    for module, dialect in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return dialect
    return "psycopg"  # open_storage then says what to install


def redact(url: str) -> str:
    """``url`` without its password, for logs and run.json."""
    if url.startswith("journal:"):
        return url
    from sqlalchemy.engine import make_url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is reported by open_storage
        return url.split("@")[-1]


def open_storage(url: str, *, heartbeat: int) -> BaseStorage:
    """The Optuna storage at ``url`` (from :func:`storage_url`); ``heartbeat`` seconds for databases."""
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage
        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    engine_kwargs = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 60}}  # several workers wait for SQLite's file lock
    try:
        return _rdb_storage(url, engine_kwargs, heartbeat)
    except ImportError as e:  # Optuna rewraps SQLAlchemy's missing-driver error
        scheme = url.split(":", 1)[0].split("+", 1)[0]
        raise ConfigError(f"--storage {redact(url)}: the database driver is missing ({e}); install "
                          f"{DRIVERS.get(scheme, 'the SQLAlchemy driver of that database')}") from None
    except Exception as e:  # noqa: BLE001 - SQLAlchemy's connection errors are many kinds; say which and where
        raise ConfigError(f"--storage {redact(url)}: cannot open the study storage ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}); is the server running and the URL right?"
                          ) from None


def _rdb_storage(url: str, engine_kwargs: dict, heartbeat: int, attempts: int = 5) -> RDBStorage:
    """RDBStorage; retried when workers starting together on an empty database race to create its tables
    (PostgreSQL: a duplicate key in pg_type): the loser finds them made on its next try."""
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)  # the heartbeat has been in Optuna since 2.9
                return RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat,
                                  grace_period=2 * heartbeat)
        except (IntegrityError, ProgrammingError, OperationalError) as e:
            racing = isinstance(e, IntegrityError) or "already exists" in str(e)
            if not racing or attempt == attempts - 1:
                raise
            log.info("another worker is creating the study tables; retrying (%s)", type(e).__name__)
            time.sleep(random.uniform(0.5, 2.0))
    raise AssertionError("unreachable")


def worker_identity() -> dict:
    """What a trial records about the process running it (to tell later whether that process died)."""
    me = psutil.Process()
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_started": me.create_time()}


def _alive(pid: int, started: float | None) -> bool:
    try:
        p = psutil.Process(pid)
        return started is None or abs(p.create_time() - started) < 1.0  # not a later process with the same id
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def fail_dead_local_trials(study: optuna.Study, storage: BaseStorage) -> list[int]:
    """Mark FAIL the running trials of this host whose process is gone; returns their numbers."""
    host, failed = socket.gethostname(), []
    study_id = storage.get_study_id_from_name(study.study_name)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = t.user_attrs
        if attrs.get("host") != host or "pid" not in attrs or _alive(attrs["pid"], attrs.get("pid_started")):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        try:
            if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                failed.append(t.number)
                log.warning("trial %d: its worker (pid %s on this machine) is gone; marked FAIL", t.number,
                            attrs["pid"])
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker got there first
    return failed


def fail_stale_trials(study: optuna.Study) -> None:
    """Optuna's heartbeat check (database storages), also when no new trial starts."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
