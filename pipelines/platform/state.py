"""Durable state of the stream processors, committed together with the source offsets it reflects.

A processor's window state lives in memory; after every micro-batch the entries that changed are written here in
one transaction with the position reached on each source partition (the next offset, and a fingerprint of the
record before it). After a crash, or when a rebalance hands a partition to another processor, the state of that
partition is loaded and reading resumes at the stored position, not at the group's committed offset: the state
and the position always belong together, so nothing is counted twice and nothing is lost (the Flink way: state
snapshots carry their source offsets).

Before a stored position is used, the record before it is read back and compared with its fingerprint. A log that
no longer matches (the embedded broker keeps topics in memory, so a restart empties them) keeps the state of the
events already counted and is read from its start, as new events.

Backends: a SQLite file (local, the default, shared by the processes of one machine) or PostgreSQL (compose),
chosen by URL. State is keyed by (processor, topic, partition, kind, key); `kind` names a family of entries (a
design's entity states, the ids seen for dedupe, ...).
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.platform.errors import DependencyUnavailable

SQLITE_DDL = (
    "CREATE TABLE IF NOT EXISTS mlsd_stream_state (processor TEXT NOT NULL, topic TEXT NOT NULL, part INTEGER NOT NULL,"
    " kind TEXT NOT NULL, key TEXT NOT NULL, value BLOB, seq INTEGER NOT NULL,"
    " PRIMARY KEY (processor, topic, part, kind, key))",
    "CREATE TABLE IF NOT EXISTS mlsd_stream_positions (processor TEXT NOT NULL, topic TEXT NOT NULL,"
    " part INTEGER NOT NULL, next_offset INTEGER NOT NULL, fingerprint TEXT NOT NULL, seq INTEGER NOT NULL,"
    " PRIMARY KEY (processor, topic, part))",
)
POSTGRES_DDL = tuple(ddl.replace("BLOB", "BYTEA").replace("INTEGER", "BIGINT") for ddl in SQLITE_DDL)

TopicPartitionKey = tuple[str, int]
EntryKey = tuple[str, int, str, str]  # topic, partition, kind, key


def fingerprint(key: bytes | None, value: bytes | None) -> str:
    """What identifies a record when its offset alone cannot (the same offset in a new log)."""
    return hashlib.blake2b((key or b"") + b"\x00" + (value or b""), digest_size=8).hexdigest()


@dataclass(frozen=True)
class Position:
    offset: int  # the next offset to read
    fingerprint: str  # of the record at offset - 1 ("" when nothing was read yet)


@dataclass
class Checkpoint:
    positions: dict[TopicPartitionKey, Position] = field(default_factory=dict)
    entries: dict[EntryKey, bytes] = field(default_factory=dict)

    def of(self, topic: str, partition: int, kind: str) -> dict[str, bytes]:
        return {k: v for (t, p, kd, k), v in self.entries.items() if (t, p, kd) == (topic, partition, kind)}


class StateStore:
    """Keyed state and source positions of one processor (its consumer group), committed together."""

    def __init__(self, url: str, processor: str) -> None:
        self.processor = processor
        self.url = url
        self.postgres = url.startswith("postgresql")
        self._lock = threading.Lock()
        self.seq = 0
        self._connection: Any = None
        self._connect()

    def _connect(self) -> None:
        try:
            if self.postgres:
                import psycopg2

                self._connection = psycopg2.connect(self.url.replace("postgresql+psycopg2://", "postgresql://"))
                ddl = POSTGRES_DDL
            else:
                path = Path(self.url.removeprefix("sqlite:///"))
                path.parent.mkdir(parents=True, exist_ok=True)
                self._connection = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
                self._connection.execute("PRAGMA journal_mode=WAL")
                self._connection.execute("PRAGMA synchronous=NORMAL")
                ddl = SQLITE_DDL
            cursor = self._connection.cursor()
            for statement in ddl:
                cursor.execute(statement)
            cursor.execute(
                self._sql("SELECT COALESCE(MAX(seq), 0) FROM mlsd_stream_positions WHERE processor = ?"),
                (self.processor,),
            )
            self.seq = int(cursor.fetchone()[0])
            if self.postgres:
                self._connection.commit()
        except Exception as exc:
            raise DependencyUnavailable(
                f"The stream state store at {self._safe_url()} is not reachable: {exc}"
            ) from exc

    def _safe_url(self) -> str:
        from pipelines.settings import masked

        return masked(self.url)

    def _sql(self, statement: str) -> str:
        return statement.replace("?", "%s") if self.postgres else statement

    def load(self, partitions: Iterable[TopicPartitionKey]) -> Checkpoint:
        """The positions and entries of `partitions` (a partition without any is simply absent)."""
        wanted = list(partitions)
        checkpoint = Checkpoint()
        if not wanted:
            return checkpoint
        with self._lock:
            cursor = self._connection.cursor()
            for topic, partition in wanted:
                cursor.execute(
                    self._sql(
                        "SELECT next_offset, fingerprint FROM mlsd_stream_positions"
                        " WHERE processor = ? AND topic = ? AND part = ?"
                    ),
                    (self.processor, topic, partition),
                )
                row = cursor.fetchone()
                if row is not None:
                    checkpoint.positions[(topic, partition)] = Position(int(row[0]), str(row[1]))
                cursor.execute(
                    self._sql(
                        "SELECT kind, key, value FROM mlsd_stream_state WHERE processor = ? AND topic = ? AND part = ?"
                    ),
                    (self.processor, topic, partition),
                )
                for kind, key, value in cursor.fetchall():
                    checkpoint.entries[(topic, partition, kind, key)] = bytes(value) if value is not None else b""
            if self.postgres:
                self._connection.commit()
        return checkpoint

    def commit(
        self,
        changes: Mapping[EntryKey, bytes | None],
        positions: Mapping[TopicPartitionKey, Position],
        keep_commits: Mapping[tuple[str, int, str], int] | None = None,
    ) -> int:
        """Write the changed entries (None deletes one) and the positions in one transaction; returns its number.

        `keep_commits` drops the entries of a (topic, partition, kind) last written more than that many commits ago
        (the ids remembered for dedupe are kept for a bounded number of commits).
        """
        with self._lock:
            seq = self.seq + 1
            try:
                cursor = self._connection.cursor()
                if not self.postgres:
                    cursor.execute("BEGIN IMMEDIATE")
                upserts = [
                    (self.processor, t, p, kd, k, v, seq) for (t, p, kd, k), v in changes.items() if v is not None
                ]
                deletes = [(self.processor, t, p, kd, k) for (t, p, kd, k), v in changes.items() if v is None]
                if upserts:
                    cursor.executemany(
                        self._sql(
                            "INSERT INTO mlsd_stream_state (processor, topic, part, kind, key, value, seq)"
                            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (processor, topic, part, kind, key)"
                            " DO UPDATE SET value = excluded.value, seq = excluded.seq"
                        ),
                        [(*row[:5], self._blob(row[5]), row[6]) for row in upserts],
                    )
                if deletes:
                    cursor.executemany(
                        self._sql(
                            "DELETE FROM mlsd_stream_state"
                            " WHERE processor = ? AND topic = ? AND part = ? AND kind = ? AND key = ?"
                        ),
                        deletes,
                    )
                for (topic, partition, kind), keep in (keep_commits or {}).items():
                    cursor.execute(
                        self._sql(
                            "DELETE FROM mlsd_stream_state"
                            " WHERE processor = ? AND topic = ? AND part = ? AND kind = ? AND seq < ?"
                        ),
                        (self.processor, topic, partition, kind, seq - keep),
                    )
                cursor.executemany(
                    self._sql(
                        "INSERT INTO mlsd_stream_positions (processor, topic, part, next_offset, fingerprint, seq)"
                        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (processor, topic, part)"
                        " DO UPDATE SET next_offset = excluded.next_offset, fingerprint = excluded.fingerprint,"
                        " seq = excluded.seq"
                    ),
                    [(self.processor, t, p, pos.offset, pos.fingerprint, seq) for (t, p), pos in positions.items()],
                )
                if self.postgres:
                    self._connection.commit()
                else:
                    cursor.execute("COMMIT")
            except Exception as exc:
                self._rollback()
                raise DependencyUnavailable(f"Writing the stream state to {self._safe_url()} failed: {exc}") from exc
            self.seq = seq
            return seq

    def _blob(self, value: bytes) -> Any:
        if self.postgres:
            import psycopg2

            return psycopg2.Binary(value)
        return sqlite3.Binary(value)

    def _rollback(self) -> None:
        try:
            if self.postgres:
                self._connection.rollback()
            else:
                self._connection.execute("ROLLBACK")
        except Exception:  # the connection is gone: the next call reconnects
            self.reconnect()

    def reconnect(self, wait_s: float = 0.0) -> None:
        time.sleep(wait_s)
        with contextlib.suppress(Exception):  # already closed or broken
            self._connection.close()
        self._connect()

    def positions(self) -> dict[TopicPartitionKey, int]:
        """Every partition's checkpointed next offset (the drills watch recovery with it)."""
        with self._lock:
            cursor = self._connection.cursor()
            cursor.execute(
                self._sql("SELECT topic, part, next_offset FROM mlsd_stream_positions WHERE processor = ?"),
                (self.processor,),
            )
            rows = cursor.fetchall()
            if self.postgres:
                self._connection.commit()
        return {(str(t), int(p)): int(o) for t, p, o in rows}

    def latest_commit(self) -> int:
        """The number of this processor's newest checkpoint (0: none yet)."""
        with self._lock:
            cursor = self._connection.cursor()
            cursor.execute(
                self._sql("SELECT COALESCE(MAX(seq), 0) FROM mlsd_stream_positions WHERE processor = ?"),
                (self.processor,),
            )
            value = int(cursor.fetchone()[0])
            if self.postgres:
                self._connection.commit()
        return value

    def has_state(self) -> bool:
        """Whether this processor checkpointed anything yet."""
        with self._lock:
            cursor = self._connection.cursor()
            found = False
            for table in ("mlsd_stream_positions", "mlsd_stream_state"):
                cursor.execute(self._sql(f"SELECT 1 FROM {table} WHERE processor = ? LIMIT 1"), (self.processor,))
                found = found or cursor.fetchone() is not None
            if self.postgres:
                self._connection.commit()
            return found

    def seed(self, entries: Mapping[EntryKey, bytes]) -> bool:
        """The first state of a processor that has none yet (the history it starts from); False if it has some.

        Processors of one group started together race to seed: one transaction checks and writes, so exactly one
        seeds and the others find its state.
        """
        with self._lock:
            cursor = self._connection.cursor()
            try:
                if self.postgres:
                    cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.processor,))
                else:
                    cursor.execute("BEGIN IMMEDIATE")
                found = False
                for table in ("mlsd_stream_positions", "mlsd_stream_state"):
                    cursor.execute(self._sql(f"SELECT 1 FROM {table} WHERE processor = ? LIMIT 1"), (self.processor,))
                    found = found or cursor.fetchone() is not None
                if not found and entries:
                    cursor.executemany(
                        self._sql(
                            "INSERT INTO mlsd_stream_state (processor, topic, part, kind, key, value, seq)"
                            " VALUES (?, ?, ?, ?, ?, ?, 0)"
                        ),
                        [(self.processor, t, p, kd, k, self._blob(v)) for (t, p, kd, k), v in entries.items()],
                    )
                if self.postgres:
                    self._connection.commit()
                else:
                    cursor.execute("COMMIT")
            except Exception as exc:
                self._rollback()
                raise DependencyUnavailable(f"Seeding the stream state at {self._safe_url()} failed: {exc}") from exc
            return not found

    def forget(self, topic: str, partition: int) -> None:
        """Drop everything stored for one partition (tests and drills start clean with it)."""
        with self._lock:
            cursor = self._connection.cursor()
            for table in ("mlsd_stream_state", "mlsd_stream_positions"):
                cursor.execute(
                    self._sql(f"DELETE FROM {table} WHERE processor = ? AND topic = ? AND part = ?"),
                    (self.processor, topic, partition),
                )
            if self.postgres:
                self._connection.commit()

    def close(self) -> None:
        with self._lock:
            self._connection.close()


def state_url(settings: Any) -> str:
    """The configured state store, or a SQLite file under home."""
    if settings.stream_state_url:
        return str(settings.stream_state_url)
    return f"sqlite:///{(settings.home / 'state' / 'streams.db').resolve()}"
