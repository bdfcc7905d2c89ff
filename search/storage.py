"""Resolve ``--storage`` URLs to Optuna storages.

Default storage: SQLite (``study.db`` in the run directory). We chose SQLite over Optuna's JournalStorage
because, in Optuna 5, only RDB storages support trial heartbeats: a trial left RUNNING by a killed
worker is then detected and re-queued (``RetryHeartbeatStaleTrialCallback``), which the journal backend
cannot do. A generous lock timeout lets a few local workers share the file. ``journal:///path`` stays
available (no heartbeat there: stale RUNNING trials are only counted out, never retried).
For many machines use ``postgresql://`` (``postgres://`` is accepted) or ``mysql://``.

Secrets: a URL is never printed whole (``redact``). Give the password outside the command line with
the ``HRVIT_NAS_STORAGE`` environment variable (the whole URL), or leave it out of the URL and let
libpq find it (``PGPASSFILE`` / ``~/.pgpass``, or a service file with ``?service=NAME``).

Several processes may open a brand-new database at the same instant: Optuna creates its schema on
first open, and the losers of that race get a unique-violation (PostgreSQL) or "already exists"
(SQLite) error, so opening retries a few times before it gives up.
"""

from __future__ import annotations

import json
import os
import re
import time
import warnings
from pathlib import Path

import optuna

from hrvit_nas import UserError

RDB_SCHEMES = ("postgresql", "mysql")
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")
HEARTBEAT_S = 60  # Optuna's recommended order of magnitude; stale after 2 missed beats
SQLITE_LOCK_TIMEOUT_S = 60
STORAGE_ENV = "HRVIT_NAS_STORAGE"
DEFAULT_RUN_ROOT = Path("runs")  # a study's default run directory is DEFAULT_RUN_ROOT / study name
SCHEME_ALIASES = {"postgres": "postgresql"}  # libpq and Heroku spell it so; SQLAlchemy 2 refuses it
SCHEMA_RACE_RETRIES = 5


def storage_url(given: str | None, run_dir: str | Path) -> str:
    """``--storage`` if given, else ``$HRVIT_NAS_STORAGE`` (keeps a password off the command line), else the
    run directory's SQLite file."""
    return given or os.environ.get(STORAGE_ENV) or default_storage_url(run_dir)


def redact(text: str) -> str:
    """``text`` with the password of every URL in it (``user:PW@``, ``password=PW``) replaced by ``***``."""
    text = re.sub(r"(://[^/\s:@]*):\S*@", r"\1:***@", str(text))
    return re.sub(r"(?i)(password=)[^&\s]*", r"\1***", text)


def default_storage_url(run_dir: str | Path) -> str:
    return f"sqlite:///{Path(run_dir).resolve() / 'study.db'}"


def normalize_url(url: str) -> str:
    """Bare file paths become ``sqlite:///`` or ``journal:///`` URLs by their suffix."""
    if "://" in url:
        scheme, rest = url.split("://", 1)
        base, plus, driver = scheme.partition("+")
        return f"{SCHEME_ALIASES.get(base, base)}{plus}{driver}://{rest}"
    path = Path(url).expanduser().resolve()
    if path.suffix in JOURNAL_SUFFIXES:
        return f"journal:///{path}"
    if path.suffix in SQLITE_SUFFIXES or path.suffix == "":
        return f"sqlite:///{path}"
    raise UserError(
        f"--storage {url!r}: unknown file type {path.suffix!r}; use a {'/'.join(SQLITE_SUFFIXES)} file (SQLite), "
        f"a {'/'.join(JOURNAL_SUFFIXES)} file (journal), or a sqlite:///, journal:///, postgresql:// or mysql:// URL"
    )


def _local_path(url: str, scheme: str) -> Path:
    path = Path(url[len(f"{scheme}:///"):]).expanduser()
    path = path if path.is_absolute() else Path.cwd() / path
    if path.is_dir():
        raise UserError(f"--storage {redact(url)!r} is a directory; give a file path for the {scheme} study file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"--storage {redact(url)!r}: cannot create {path.parent} ({error.strerror}); choose a writable location") from None
    return path


def open_storage(
    url: str, *, heartbeat_s: int | None = HEARTBEAT_S, retries: int = 3, fast_commits: bool = False,
    existing: bool = False,
) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url``; RDB storages get a heartbeat so killed workers' trials are retried.

    ``fast_commits`` (the search's writers): an SQLite file switches to write-ahead logging with
    ``synchronous=NORMAL``. Optuna commits every parameter and attribute on its own (~40 per trial), and
    with SQLite's default rollback journal each commit waits for several fsyncs; in WAL mode a commit
    survives a killed process and waits for none (a power cut may lose the last trials, never the file).

    ``existing`` (readers: reports, exports, ``load_trials``): Optuna writes its schema into any database it
    opens, so the store is first looked at read-only and refused unless it already holds Optuna's tables.

    Raises ``UserError`` for an unknown scheme, an unreachable server or a file that is not a study store;
    nothing is created or changed in an existing store before it opens cleanly.
    """
    url = given = normalize_url(str(url))
    scheme = url.split("://", 1)[0]
    base_scheme = scheme.split("+", 1)[0]
    if scheme == "journal":
        path = _local_path(url, "journal")
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        try:
            return JournalStorage(JournalFileBackend(str(path)))
        except Exception as error:  # corrupt journal lines, permissions
            raise UserError(f"--storage {redact(url)!r}: cannot read the journal ({redact(error)}); point to an Optuna journal file") from None
    if base_scheme == "sqlite":
        path = _local_path(url, scheme)
        if existing:
            _require_sqlite_tables(path, given)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_LOCK_TIMEOUT_S}}
    elif base_scheme in RDB_SCHEMES:
        url = _with_installed_driver(url, scheme)
        engine_kwargs = {"pool_pre_ping": True}
    else:
        raise UserError(
            f"--storage {redact(url)!r}: unknown scheme {scheme!r}; use a file path, sqlite:///PATH, journal:///PATH, "
            "postgresql://USER:PASS@HOST/DB or mysql://USER:PASS@HOST/DB"
        )
    heartbeat = {}
    if heartbeat_s:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=retries)
        heartbeat = {
            "heartbeat_interval": heartbeat_s,
            "grace_period": 2 * heartbeat_s,
            "heartbeat_stale_trial_callback": retry,
        }
    for attempt in range(SCHEMA_RACE_RETRIES + 1):
        try:
            if existing and base_scheme in RDB_SCHEMES:
                _require_server_tables(url, engine_kwargs, given)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat)
            if fast_commits and base_scheme == "sqlite":
                _write_ahead_log(storage.engine)
            return storage
        except UserError:
            raise
        except ImportError as error:
            raise UserError(f"--storage {redact(given)}: the database driver is missing ({error}); pip install it") from None
        except Exception as error:  # sqlalchemy OperationalError / DatabaseError / ArgumentError / IntegrityError
            if attempt < SCHEMA_RACE_RETRIES and _lost_schema_race(error):
                time.sleep(0.2 * (attempt + 1))
                continue
            reason = redact(str(error).strip().splitlines()[0]) if str(error).strip() else type(error).__name__
            raise UserError(
                f"--storage {redact(given)}: cannot open the study storage ({reason}); check that the server is running "
                "and reachable, the credentials, and that a file is an Optuna SQLite study"
            ) from None
    raise AssertionError("unreachable: the last attempt returns or raises")


def _no_study_error(given: str) -> UserError:
    return UserError(f"--storage {redact(given)} holds no Optuna study (it is missing, empty or not an Optuna store); "
                     "pass the --storage the search wrote to (see `hrvit-nas search --help`)")


def _require_sqlite_tables(path: Path, given: str) -> None:
    """Look at the file through a read-only SQLite connection, which can neither create nor change it."""
    import contextlib
    import sqlite3

    if not path.is_file():
        raise _no_study_error(given)
    try:
        with contextlib.closing(sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError:
        tables = set()
    if "studies" not in tables:
        raise _no_study_error(given)


def _require_server_tables(url: str, engine_kwargs: dict, given: str) -> None:
    """Ask the server's catalogue whether Optuna's tables exist; inspecting creates nothing."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, **engine_kwargs)
    try:
        with engine.connect() as connection:
            present = sqlalchemy.inspect(connection).has_table("studies")
    finally:
        engine.dispose()
    if not present:
        raise _no_study_error(given)


def _write_ahead_log(engine) -> None:
    import sqlalchemy

    sqlalchemy.event.listen(engine, "connect", lambda connection, _record: connection.execute("PRAGMA synchronous=NORMAL"))
    engine.dispose()  # pooled connections reopen with the pragma
    with engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA journal_mode=WAL")


def _lost_schema_race(error: Exception) -> bool:
    """Another process created Optuna's tables (or its version row) while this one tried to."""
    text = str(error).lower()
    return any(sign in text for sign in ("already exists", "unique", "duplicate", "database is locked"))


# SQLAlchemy's default driver per scheme, then the alternatives we accept (first installed wins).
DRIVERS = {"postgresql": ("psycopg", "psycopg2"), "mysql": ("MySQLdb", "pymysql")}
DRIVER_SCHEMES = {"psycopg": "postgresql+psycopg", "psycopg2": "postgresql+psycopg2", "MySQLdb": "mysql+mysqldb", "pymysql": "mysql+pymysql"}


def _with_installed_driver(url: str, scheme: str) -> str:
    """``postgresql://`` means psycopg 3 to SQLAlchemy 2.1; use psycopg2 (or pymysql) when that is what is installed."""
    if scheme not in DRIVERS:
        return url
    import importlib.util

    for module in DRIVERS[scheme]:
        if importlib.util.find_spec(module) is not None:
            return DRIVER_SCHEMES[module] + url[len(scheme):]
    raise UserError(f"--storage {redact(url)}: no {scheme} driver installed; pip install {' or '.join(DRIVERS[scheme])}")


def write_trial(trial: optuna.Trial, *, params: dict | None = None, user_attrs: dict | None = None) -> None:
    """Store ``params`` (name -> (value, distribution)) and ``user_attrs`` of a running ``trial`` in one
    transaction, as if each had been suggested or set on its own.

    Optuna commits every parameter and attribute separately: 25 knobs and 8 attributes made 45 commits and
    124 SQL statements per trial of the default space, most of the search's own time per trial on SQLite.
    On an RDB storage (behind Optuna's ``_CachedStorage``) the rows go in one session here, new rows as
    one multi-row INSERT per table (attributes the trial already holds take Optuna's upsert); other
    storages (journal, in-memory) take Optuna's per-item calls. The trial's cache is updated, so
    ``trial.params`` and later ``suggest_*`` calls answer from it.
    """
    params, user_attrs = params or {}, user_attrs or {}
    backend = getattr(trial.storage, "_backend", None)
    try:  # Optuna internals (no public batch write exists): a release that moves them takes the per-item path
        import sqlalchemy
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        cached = trial._cached_frozen_trial
        batched = isinstance(backend, optuna.storages.RDBStorage) and hasattr(backend, "_set_trial_attr_without_commit")
    except (ImportError, AttributeError):
        batched = False
    if not batched:
        for name, (value, distribution) in params.items():
            trial._suggest(name, distribution)  # relative/fixed parameters: Optuna returns ``value``
        for key, value in user_attrs.items():
            trial.set_user_attr(key, value)
        return
    with _create_scoped_session(backend.scoped_session) as session:
        row = models.TrialModel.find_or_raise_by_id(trial._trial_id, session)
        backend.check_trial_is_updatable(trial._trial_id, row.state)
        if params:  # the study's settings fix the space, so the distributions match every earlier trial's
            session.execute(sqlalchemy.insert(models.TrialParamModel), [  # one multi-row INSERT
                {"trial_id": trial._trial_id, "param_name": name, "param_value": distribution.to_internal_repr(value),
                 "distribution_json": optuna.distributions.distribution_to_json(distribution)}
                for name, (value, distribution) in params.items()
            ])
        new = {key: value for key, value in user_attrs.items() if key not in cached.user_attrs}  # the cache mirrors the store
        if new:  # nothing to overwrite: one multi-row INSERT
            session.execute(sqlalchemy.insert(models.TrialUserAttributeModel), [
                {"trial_id": trial._trial_id, "key": key, "value_json": json.dumps(value)} for key, value in new.items()
            ])
        for key in user_attrs.keys() - new.keys():  # Optuna's upsert (per row, per SQL dialect)
            backend._set_trial_attr_without_commit(session, models.TrialUserAttributeModel, trial._trial_id, key, user_attrs[key])
    for name, (value, distribution) in params.items():
        cached.params[name], cached.distributions[name] = value, distribution
    cached.user_attrs.update(user_attrs)
