"""The trial cache: one SQLite file (stdlib ``sqlite3``, WAL) in the tune folder.

A trial is keyed by the input model's hash, the canonical point (the full pipeline and session
settings), the profile, the data and target, and the onnxopt and onnxruntime versions; it is written
once, when the trial ends, in its own transaction, so ``kill -9`` loses at most the trials in flight.
A re-run with the same seed replays the optimizer's asks and finds them here.

Example::

    cache = TrialCache("out/trials.sqlite")
    cache.get(key) or cache.put(key, trial)
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS trials (
    key TEXT PRIMARY KEY,
    run TEXT NOT NULL,
    seq INTEGER NOT NULL,
    point TEXT NOT NULL,
    result TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run TEXT PRIMARY KEY,
    meta TEXT NOT NULL,
    created REAL NOT NULL
);
"""


def digest(*parts: Any) -> str:
    """A stable hash of JSON-able parts (bytes hashed as they are)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()


class TrialCache:
    """Trials by key; ``path=None`` keeps them in memory (the in-memory API touches no disk)."""

    def __init__(self, path: str | Path | None):
        self.path = str(path) if path is not None else ":memory:"
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        if path is not None:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def get(self, key: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT result FROM trials WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, run: str, seq: int, point: dict[str, Any], result: dict[str, Any]) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO trials VALUES (?, ?, ?, ?, ?, ?)",
                            (key, run, seq, json.dumps(point, sort_keys=True), json.dumps(result), time.time()))

    def start_run(self, run: str, meta: dict[str, Any]) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO runs VALUES (?, ?, ?)", (run, json.dumps(meta), time.time()))

    def runs(self) -> list[tuple[str, dict[str, Any]]]:
        rows = self.db.execute("SELECT run, meta FROM runs ORDER BY created").fetchall()
        return [(run, json.loads(meta)) for run, meta in rows]

    def trials(self, run: str | None = None) -> list[dict[str, Any]]:
        """Stored trials (of one run, or all) in the order they finished."""
        query = "SELECT key, run, seq, point, result FROM trials"
        rows = self.db.execute(query + (" WHERE run = ?" if run else "") + " ORDER BY created",
                               (run,) if run else ()).fetchall()
        return [{"key": k, "run": r, "seq": s, "point": json.loads(p), **json.loads(res)}
                for k, r, s, p, res in rows]

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM trials").fetchone()[0]

    def close(self) -> None:
        self.db.close()
