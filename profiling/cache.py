"""Local SQLite cache of profile results, keyed by everything that changes the numbers.

Key = (config hash, input size, batch, dtype, measurement options, device fingerprint id), so a changed
driver, torch version, power limit or thread count simply misses. SQLite transactions make each write
atomic; a file SQLite cannot read, one that is not a profile cache, or a row whose checksum does not match raises
``CacheCorruptError`` rather than being trusted or overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Self

from hrvit_nas import UserError
from profiling.result import ProfileResult

CACHE_SCHEMA_VERSION = 1
CACHE_DIR_ENV = "HRVIT_NAS_CACHE_DIR"


class CacheCorruptError(UserError):
    """The cache file is not a readable profile cache; nothing in it is used."""


def default_cache_path() -> Path:
    """``$HRVIT_NAS_CACHE_DIR/profiles.sqlite``, else ``~/.cache/hrvit-nas/profiles.sqlite``."""
    directory = os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "hrvit-nas"
    return Path(directory) / "profiles.sqlite"


def cache_key(
    config_hash: str, input_size: tuple[int, int], batch: int, dtype: str, options: dict[str, Any], fingerprint_id: str
) -> str:
    payload = {
        "config": config_hash, "input": list(input_size), "batch": batch, "dtype": dtype,
        "options": options, "fingerprint": fingerprint_id, "schema": CACHE_SCHEMA_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _checksum(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class ProfileCache:
    """``get(key)`` / ``put(key, result)`` over one SQLite file (safe for several processes)."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path is not None else default_cache_path()
        if self.path.is_dir():
            raise UserError(f"profile cache path {self.path} is a directory; pass a file path such as {self.path / 'profiles.sqlite'}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._connection = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            self._open()
        except sqlite3.DatabaseError as error:
            self._connection.close()
            self._corrupt(str(error))

    def _corrupt(self, problem: str) -> None:
        raise CacheCorruptError(
            f"profile cache {self.path} is corrupt ({problem}); it was left untouched: move it away or delete it, "
            "or run with --no-cache / --cache OTHER_PATH"
        )

    def _open(self) -> None:
        # No full integrity scan (it grows with the file and would cost more than the 50 ms a hit may take):
        # a damaged page raises DatabaseError where it is read, and each entry carries a checksum.
        version = self._connection.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in self._connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables:
            with self._connection:
                self._connection.execute("BEGIN IMMEDIATE")
                self._connection.execute(
                    "CREATE TABLE IF NOT EXISTS profiles (key TEXT PRIMARY KEY, config_hash TEXT, fingerprint_id TEXT,"
                    " created_at REAL, result_json TEXT NOT NULL, checksum TEXT NOT NULL)"
                )
                self._connection.execute(f"PRAGMA user_version = {CACHE_SCHEMA_VERSION}")
        elif version != CACHE_SCHEMA_VERSION or "profiles" not in tables:
            self._corrupt(f"not a profile cache of schema {CACHE_SCHEMA_VERSION} (schema {version}, tables {sorted(tables)})")

    def get(self, key: str) -> ProfileResult | None:
        try:
            row = self._connection.execute("SELECT result_json, checksum FROM profiles WHERE key = ?", (key,)).fetchone()
        except sqlite3.DatabaseError as error:
            self._corrupt(str(error))
        if row is None:
            return None
        text, checksum = row
        if _checksum(text) != checksum:
            self._corrupt(f"entry {key[:12]} fails its checksum")
        try:
            return ProfileResult.from_dict(json.loads(text))
        except (ValueError, TypeError, KeyError) as error:
            self._corrupt(f"entry {key[:12]} is unreadable: {error}")
            raise  # unreachable

    def put(self, key: str, result: ProfileResult) -> None:
        text = json.dumps(result.to_dict(), sort_keys=True)
        with self._connection:
            self._connection.execute(
                "INSERT OR REPLACE INTO profiles VALUES (?, ?, ?, ?, ?, ?)",
                (key, result.config_hash, result.fingerprint_id, time.time(), text, _checksum(text)),
            )

    def __len__(self) -> int:
        return self._connection.execute("SELECT COUNT(*) FROM profiles").fetchone()[0]

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
