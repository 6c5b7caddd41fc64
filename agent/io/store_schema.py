"""The interaction store's SQLite schema, its migrations, and how a connection is opened.

Schema versions are tracked with ``PRAGMA user_version``; :data:`MIGRATIONS` upgrades a file
written by an older version in place, each step in one transaction with its version bump.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from agent.errors import DataError

_SCHEMA_V1 = """
CREATE TABLE interactions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    kind TEXT NOT NULL,
    messages TEXT,
    prompt TEXT,
    response TEXT NOT NULL,
    adapter_version TEXT,
    latency_ms REAL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    feedback INTEGER,
    correction TEXT,
    feedback_at REAL,
    source TEXT NOT NULL DEFAULT 'served',
    size_bytes INTEGER NOT NULL
);
CREATE INDEX interactions_created ON interactions(created_at);
"""

# v2: a change sequence so that feedback given after the trainer read a row makes the row new
# again for ``examples_since``; and an input hash for de-duplication.
_SCHEMA_V2 = """
ALTER TABLE interactions ADD COLUMN change_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE interactions ADD COLUMN input_sha TEXT;
UPDATE interactions SET change_seq = seq;
CREATE INDEX interactions_change ON interactions(change_seq);
CREATE INDEX interactions_input ON interactions(input_sha);
"""

# v3: a log of purges, one row per deleted batch (committed with it), with the insertion
# ``seq`` range it deleted: the daemon compares it with the range each run and each adapter
# was trained on, and removes what was trained on purged rows (agent/io/store_purge.py).
_SCHEMA_V3 = """
CREATE TABLE purges (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    rows INTEGER NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL
);
"""

MIGRATIONS: tuple[str, ...] = (_SCHEMA_V1, _SCHEMA_V2, _SCHEMA_V3)
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to :data:`SCHEMA_VERSION`; returns the version found before."""
    found = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if found > SCHEMA_VERSION:
        raise DataError(
            f"the interaction store has schema {found}, newer than this agent's "
            f"{SCHEMA_VERSION}; upgrade mobizo-agent or purge the store"
        )
    for version in range(found, SCHEMA_VERSION):
        # each migration is one transaction together with its version bump
        conn.executescript(
            "BEGIN;" + MIGRATIONS[version] + f"PRAGMA user_version = {version + 1};COMMIT;"
        )
    return found


def connect(path: Path) -> sqlite3.Connection:
    """A connection in WAL mode, autocommit (transactions are explicit), shareable by threads.

    A new file is created with ``auto_vacuum=INCREMENTAL`` (it only takes effect before the
    first table exists), so a purge can hand pages back in small steps instead of one
    VACUUM that locks the file; ``secure_delete`` overwrites deleted content on every
    connection, so purged or evicted text does not linger in free pages.
    """
    conn = sqlite3.connect(path, check_same_thread=False, timeout=30, isolation_level=None)
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    conn.execute("PRAGMA secure_delete=ON")
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode: a commit survives a process kill (it is in the WAL file); only
    # an OS crash can lose the last batch. FULL would fsync every batch on the SD card.
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn
