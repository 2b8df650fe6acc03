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

import contextlib
import importlib.util
import json
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
    """The Optuna storage at ``url`` (from :func:`storage_url`); ``heartbeat`` seconds for databases.

    Raises:
        ConfigError: a SQLite or journal file that is not a study's (:func:`check_study_file`), a missing
            driver, or a database that cannot be opened.
    """
    check_study_file(url)
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
        hint = ("is it a study database that maskcls tune wrote? (else give another --study-dir)"
                if url.startswith("sqlite") else "is the server running and the URL right?")
        raise ConfigError(f"--storage {redact(url)}: cannot open the study storage ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}); {hint}") from None


# A few of the tables Optuna's RDB storage creates: a SQLite file holding them holds an Optuna study.
OPTUNA_TABLES = {"studies", "trials", "version_info"}


def check_study_file(url: str) -> None:
    """Refuse a SQLite database or journal file at ``url`` that is not a study's, before anything writes to it.

    Optuna adds its tables to any SQLite database and appends to any file it is given; a study file is
    used only when it is new (absent or empty) or already holds an Optuna study, so that another program's
    database or a damaged file is never changed (and the message names the real cause).

    Raises:
        ConfigError: naming the file, what it is and what to do instead.
    """
    path = _study_file(url)
    if path is None or not path.exists():
        return
    if not path.is_file():
        raise ConfigError(f"{path} is not a file, so it cannot be the study's database: move it away, or give "
                          "another --study-dir")
    if path.stat().st_size == 0:
        return
    if url.startswith("journal:"):
        _check_journal(path)
    else:
        _check_sqlite(path)


def _study_file(url: str) -> Path | None:
    """The file a journal or SQLite URL names (None for a server's database or SQLite in memory)."""
    if url.startswith("journal:"):
        return Path(url.removeprefix("journal:"))
    from sqlalchemy.engine import make_url
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - an unparsable URL is reported by open_storage
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _check_sqlite(path: Path) -> None:
    import sqlite3
    from urllib.parse import quote
    try:  # read-only: nothing of the file changes, whatever it is
        with contextlib.closing(sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as e:
        raise ConfigError(f"{path} is not a SQLite database ({e}): a damaged file or another program's, not a "
                          "study of maskcls tune; move it away, or give another --study-dir") from None
    if tables and not OPTUNA_TABLES <= tables:
        shown = ", ".join(sorted(tables)[:5]) + (" …" if len(tables) > 5 else "")
        raise ConfigError(f"{path} is another program's SQLite database (tables {shown}), not an Optuna study; "
                          "maskcls tune writes only into a study database it created: give another --study-dir "
                          "(or --storage sqlite:///NEW.db)")


def _check_journal(path: Path) -> None:
    with open(path, "rb") as fh:
        first = fh.readline(1 << 20)
    try:
        entry = json.loads(first)
    except (UnicodeDecodeError, ValueError):
        entry = None
    if not isinstance(entry, dict) or "op_code" not in entry:
        raise ConfigError(f"{path} is not an Optuna journal (its first line is no journal entry): a damaged file or "
                          "another program's; maskcls tune appends only to a journal it wrote: give another "
                          "--study-dir (or --storage journal:NEW_PATH)")


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
