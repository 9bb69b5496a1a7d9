"""The caption store: SQLite (WAL), one row per caption, schema versioned with ``PRAGMA user_version``.

A caption's ``start`` and ``end`` events share an ``event_id``: both land in
the same row (an upsert keyed on node and event id), in either order and as
often as QoS 1 repeats them. Times are integer milliseconds since the epoch
(UTC), so the ISO strings of the payloads come back exactly.

Only this module speaks SQL, and only with parameters.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

_LOGGER = logging.getLogger(__name__)

SQLITE_HEADER = b"SQLite format 3\x00"

# Each entry takes the database from version i to i + 1, in one transaction.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: the captions
        """CREATE TABLE captions (
             node     TEXT    NOT NULL,
             event_id TEXT    NOT NULL,
             label    TEXT    NOT NULL,
             start_ms INTEGER NOT NULL,
             end_ms   INTEGER,
             urgent   INTEGER NOT NULL DEFAULT 0,
             level    REAL,
             model    TEXT,
             UNIQUE (node, event_id))""",
        "CREATE INDEX captions_start ON captions (start_ms)",
        "CREATE INDEX captions_node_start ON captions (node, start_ms)",
    ),
    (  # 2: the caption's words, and fast look-ups of urgent and open captions
        "ALTER TABLE captions ADD COLUMN caption TEXT",
        "CREATE INDEX captions_urgent ON captions (start_ms) WHERE urgent = 1",
        "CREATE INDEX captions_open ON captions (node, start_ms) WHERE end_ms IS NULL",
    ),
    (  # 3: nodes retired with `audiocapd --retire-node` (no digest, no sensors until they speak again)
        "CREATE TABLE retired (node TEXT PRIMARY KEY, at_ms INTEGER NOT NULL)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)
OPEN_LOOKBACK_MS = 86_400_000
"""An open caption (a ``start`` whose ``end`` never came, e.g. its daemon was
killed and not restarted) counts as on for at most a day after its start."""


class StoreError(RuntimeError):
    """The database cannot be used; the message is one line with the cause and the fix."""


class DiskFull(StoreError):
    """A write failed for lack of space (the disk, or SQLite's page limit)."""


@dataclass(frozen=True)
class Caption:
    """One caption event, validated (see :func:`history.ingest.parse_caption`)."""

    node: str
    event_id: str
    label: str
    start_ms: int
    end_ms: int | None
    urgent: bool
    level: float | None
    model: str | None
    caption: str | None


def iso(ms: int | None) -> str | None:
    """Milliseconds since the epoch -> ``2026-11-23T21:00:01.234Z`` (the payloads' form)."""
    if ms is None:
        return None
    dt = datetime.fromtimestamp(ms // 1000, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


_COLUMNS = "node, event_id, label, start_ms, end_ms, urgent, level, model, caption"


def row_json(row: Sequence[Any]) -> dict[str, Any]:
    """A row (in ``_COLUMNS`` order) as the JSON object of answers and digests (the event payload's keys)."""
    node, event_id, label, start_ms, end_ms, urgent, level, model, caption = row
    return {"event_id": event_id, "node": node, "label": label, "start": iso(start_ms), "end": iso(end_ms),
            "urgent": bool(urgent), "level_dbfs": level, "model": model, "caption": caption}


class Store:
    """The database. One thread uses it (the service's worker).

    Args:
      path: the SQLite file (made when missing).
      max_bytes: the size bound (the oldest captions go first).
      retention_ms: how long captions are kept.

    Raises:
      StoreError: the file is not an SQLite database, is damaged, or was made
        by a newer version; it is left exactly as it was.
    """

    def __init__(self, path: str | os.PathLike, max_bytes: int = 512 << 20,
                 retention_ms: int = 30 * 86_400_000) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.retention_ms = retention_ms
        self._span: int | None = None
        self._check_file()
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open the database: {exc}") from None
        try:
            self._prepare()
        except sqlite3.DatabaseError as exc:
            self.db.close()
            raise StoreError(f"{self.path}: the database is damaged ({exc}); it was left as it is: restore a backup "
                             "or move it aside to start an empty one") from None

    # --- opening ---------------------------------------------------------------------

    def _check_file(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"{self.path}: cannot make its folder: {exc.strerror or exc}") from None
            return
        try:
            with open(self.path, "rb") as fh:
                head = fh.read(len(SQLITE_HEADER))
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot read the database: {exc.strerror or exc}") from None
        if head != SQLITE_HEADER:
            raise StoreError(f"{self.path}: not an SQLite database (it starts with {head[:8]!r}); it was left as it "
                             "is: restore a backup or move it aside to start an empty one")

    def _prepare(self) -> None:
        db = self.db
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path}: made by a newer audiocap-history (schema {version}, this one knows "
                             f"{SCHEMA_VERSION}); upgrade audiocap, or use another --db")
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if version == 0 and tables:
            raise StoreError(f"{self.path}: an SQLite database of something else (tables {', '.join(sorted(tables))}); "
                             "use another --db")
        check = db.execute("PRAGMA quick_check(1)").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(f"quick_check: {' '.join(check.split())[:120]}")
        if version == 0:
            db.execute("PRAGMA auto_vacuum = INCREMENTAL")  # before the first table: lets the file shrink
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StoreError(f"{self.path}: SQLite refused WAL mode ({mode}); put the database on a local file system")
        db.execute("PRAGMA synchronous = FULL")  # an acknowledged caption is on disk
        db.execute("PRAGMA busy_timeout = 5000")
        db.execute("PRAGMA journal_size_limit = 4194304")  # the WAL shrinks back to 4 MB after a checkpoint
        for step in range(version, SCHEMA_VERSION):
            with self._transaction():
                for sql in MIGRATIONS[step]:
                    db.execute(sql)
                db.execute(f"PRAGMA user_version = {step + 1}")
            _LOGGER.info("%s: schema migrated to version %d", self.path, step + 1)

    class _Tx:
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def __enter__(self) -> sqlite3.Connection:
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
            if kind is None:
                try:
                    self.db.execute("COMMIT")
                    return
                except sqlite3.Error:
                    self._rollback()  # SQLite may have rolled back already (a full disk)
                    raise
            self._rollback()

        def _rollback(self) -> None:
            if self.db.in_transaction:
                try:
                    self.db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass

    def _transaction(self) -> "Store._Tx":
        return Store._Tx(self.db)

    def checkpoint(self) -> None:
        """Moves the WAL into the database and truncates it: on a full disk this gives back
        the WAL's space (it grows to ~4 MB between automatic checkpoints)."""
        try:
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            _LOGGER.debug("checkpoint failed: %s", exc)

    def close(self) -> None:
        """Checkpoints the WAL into the database and closes it."""
        self.checkpoint()
        self.db.close()

    # --- writing ---------------------------------------------------------------------

    def add(self, captions: Iterable[Caption]) -> int:
        """Writes captions (start and end events merge by node and event id) in one transaction.

        Returns:
          How many events were written.

        Raises:
          DiskFull: no space left (nothing of the batch was written).
          StoreError: another write failure.
        """
        rows = [(c.node, c.event_id, c.label, c.start_ms, c.end_ms, int(c.urgent), c.level, c.model, c.caption)
                for c in captions]
        if not rows:
            return 0
        try:
            with self._transaction() as db:
                db.executemany(
                    f"INSERT INTO captions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (node, event_id) DO UPDATE SET "
                    "  end_ms = COALESCE(excluded.end_ms, captions.end_ms),"
                    "  start_ms = MIN(captions.start_ms, excluded.start_ms),"
                    "  urgent = MAX(captions.urgent, excluded.urgent),"
                    "  level = CASE WHEN captions.level IS NULL THEN excluded.level"
                    "               WHEN excluded.level IS NULL THEN captions.level"
                    "               ELSE MAX(captions.level, excluded.level) END,"
                    "  model = COALESCE(excluded.model, captions.model),"
                    "  caption = COALESCE(excluded.caption, captions.caption)",
                    rows)
        except sqlite3.Error as exc:
            raise _write_error(self.path, exc) from None
        if self._span is not None:
            self._span = max([self._span, *(r[4] - r[3] for r in rows if r[4] is not None)])
        return len(rows)

    def _max_span(self) -> int:
        """The longest caption stored (ms): how far before a range a caption on in it may start.
        Counted once (a full scan), then kept up to date by :meth:`add`."""
        if self._span is None:
            self._span = self.db.execute("SELECT COALESCE(MAX(end_ms - start_ms), 0) FROM captions").fetchone()[0]
        return self._span

    def used_bytes(self) -> int:
        """Bytes of the database in use (pages minus free pages)."""
        pages, free, size = (self.db.execute(f"PRAGMA {p}").fetchone()[0]
                             for p in ("page_count", "freelist_count", "page_size"))
        return (pages - free) * size

    def prune(self, now_ms: int | None = None) -> int:
        """Enforces the retention and the size bound; returns how many captions were deleted.

        Raises:
          DiskFull, StoreError: as :meth:`add`.
        """
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        cutoff = now_ms - self.retention_ms
        deleted = 0
        try:
            with self._transaction() as db:
                deleted += db.execute("DELETE FROM captions WHERE start_ms < ? AND COALESCE(end_ms, start_ms) < ?",
                                      (cutoff, cutoff)).rowcount
            while self.used_bytes() > self.max_bytes:
                total = self.db.execute("SELECT COUNT(*) FROM captions").fetchone()[0]
                if total == 0:
                    break
                # The share over the bound, and a little more, so this is not run at every caption.
                share = 1.0 - self.max_bytes / self.used_bytes() + 0.05
                n = max(100, int(total * min(1.0, share)))
                with self._transaction() as db:
                    deleted += db.execute("DELETE FROM captions WHERE rowid IN "
                                          "(SELECT rowid FROM captions ORDER BY start_ms LIMIT ?)", (n,)).rowcount
            if deleted:
                self.db.execute("PRAGMA incremental_vacuum")
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            raise _write_error(self.path, exc) from None
        return deleted

    # --- reading ---------------------------------------------------------------------

    def _overlapping(self, columns: str, since_ms: int, until_ms: int, nodes: Sequence[str] | None,
                     labels: Sequence[str] | None = None, urgent_only: bool = False,
                     before: tuple[int, str] | None = None, limit: int | None = None,
                     col_args: Sequence[Any] = (), extra: tuple[str, Sequence[Any]] | None = None,
                     group: str = "") -> list[tuple]:
        """Captions on at some moment of [since_ms, until_ms), newest start first
        (or aggregated: ``group`` is a GROUP BY clause, ``columns`` its aggregates
        with their parameters in ``col_args``; ``extra`` is one more condition).

        Two index range scans: captions that started in the window's reach
        (back to the longest caption ended so far), and open captions (no
        ``end``) that started up to a day before.
        """
        span = self._max_span()
        where = ["start_ms < ?", "(end_ms IS NULL OR end_ms >= ?)"]
        args: list[Any] = [until_ms, since_ms]
        for name, values in (("node", nodes), ("label", labels)):
            if values:
                where.append(f"{name} IN ({', '.join('?' * len(values))})")
                args.extend(values)
        if urgent_only:
            where.append("urgent = 1")
        if before is not None:
            where.append("(start_ms < ? OR (start_ms = ? AND event_id < ?))")
            args.extend([before[0], before[0], before[1]])
        if extra is not None:
            where.append(extra[0])
            args.extend(extra[1])
        cond = " AND ".join(where)
        order = group or "ORDER BY start_ms DESC, event_id DESC" + (" LIMIT ?" if limit is not None else "")
        tail = [limit] if limit is not None and not group else []
        closed = self.db.execute(f"SELECT {columns} FROM captions WHERE start_ms >= ? AND {cond} {order}",
                                 [*col_args, since_ms - span, *args, *tail]).fetchall()
        open_ = self.db.execute(f"SELECT {columns} FROM captions WHERE end_ms IS NULL AND start_ms < ? "
                                f"AND start_ms >= ? AND {cond} {order}",
                                [*col_args, since_ms - span, since_ms - OPEN_LOOKBACK_MS, *args, *tail]).fetchall()
        return closed + open_  # every open row starts before every closed one

    def captions(self, since_ms: int, until_ms: int, nodes: Sequence[str] | None = None,
                 labels: Sequence[str] | None = None, urgent_only: bool = False, limit: int = 200,
                 before: tuple[int, str] | None = None) -> dict[str, Any]:
        """A page of the captions on during [since_ms, until_ms), newest first.

        Returns:
          ``captions`` (at most ``limit``), ``truncated`` and, when truncated,
          ``next`` (the cursor for the following page); ``totals`` per class
          over the whole range (``n``, seconds ``s`` inside the range, ``urgent``).
        """
        rows = self._overlapping(_COLUMNS, since_ms, until_ms, nodes, labels, urgent_only, before, limit + 1)
        truncated = len(rows) > limit
        rows = rows[:limit]
        out: dict[str, Any] = {"captions": [row_json(r) for r in rows], "truncated": truncated}
        if truncated:
            out["next"] = [rows[-1][3], rows[-1][1]]
        if before is None:
            out["totals"] = self.totals(since_ms, until_ms, nodes, urgent_only)
        return out

    def totals(self, since_ms: int, until_ms: int, nodes: Sequence[str] | None = None,
               urgent_only: bool = False) -> dict[str, dict[str, float]]:
        """Per class: captions (``n``), seconds on inside the range (``s``), urgent ones (``urgent``).
        An open caption counts as on until ``until_ms``. Aggregated by SQLite."""
        out: dict[str, dict[str, float]] = {}
        rows = self._overlapping("label, COUNT(*), SUM(MAX(0, MIN(COALESCE(end_ms, ?), ?) - MAX(start_ms, ?))), "
                                 "SUM(urgent)", since_ms, until_ms, nodes, urgent_only=urgent_only,
                                 col_args=(until_ms, until_ms, since_ms), group="GROUP BY label")
        for label, n, ms, urgent in rows:
            t = out.setdefault(label, {"n": 0, "s": 0.0, "urgent": 0})
            t["n"] += n
            t["urgent"] += urgent
            t["s"] += ms / 1000
        for t in out.values():
            t["s"] = round(t["s"], 1)
        return out

    def hourly(self, from_ms: int, hours: int, nodes: Sequence[str] | None = None) -> dict[str, Any]:
        """Per class and hour from ``from_ms``: captions that started in the hour (``n``),
        seconds on in it (``s``), urgent captions started in it (``urgent``)."""
        until = from_ms + hours * 3_600_000
        out: dict[str, dict[str, list]] = {}

        def row(label: str) -> dict[str, list]:
            return out.setdefault(label, {"n": [0] * hours, "s": [0.0] * hours, "urgent": [0] * hours})

        # Most captions lie inside one hour: SQLite sums those; the few across an hour's edge
        # (or still open) are split here.
        inside = ("start_ms >= ? AND end_ms IS NOT NULL AND end_ms < ? AND (end_ms - ?) / 3600000 = "
                  "(start_ms - ?) / 3600000", (from_ms, until, from_ms, from_ms))
        for label, h, n, urgent, ms in self._overlapping(
                "label, (start_ms - ?) / 3600000 AS h, COUNT(*), SUM(urgent), SUM(end_ms - start_ms)", from_ms,
                until, nodes, col_args=(from_ms,), extra=inside, group="GROUP BY label, h"):
            t = row(label)
            t["n"][h] += n
            t["urgent"][h] += urgent
            t["s"][h] += ms / 1000
        across = (f"NOT ({inside[0]})", inside[1])
        for label, start, end, urgent in self._overlapping("label, start_ms, end_ms, urgent", from_ms, until, nodes,
                                                           extra=across):
            t = row(label)
            if start >= from_ms:
                h = (start - from_ms) // 3_600_000
                t["n"][h] += 1
                t["urgent"][h] += urgent
            a, b = max(start, from_ms), min(end if end is not None else until, until)
            while a < b:
                h = (a - from_ms) // 3_600_000
                edge = min(b, from_ms + (h + 1) * 3_600_000)
                t["s"][h] += (edge - a) / 1000
                a = edge
        for t in out.values():
            t["s"] = [round(s, 1) for s in t["s"]]
        return {"from": iso(from_ms), "hours": hours, "labels": out}

    def digest(self, node: str, day_start_ms: int, now_ms: int) -> dict[str, Any]:
        """A node's day so far: counts per class, the last urgent caption, the last caption, what is on."""
        counts = self.totals(day_start_ms, now_ms + 1, [node])
        db = self.db
        last_urgent = db.execute(f"SELECT {_COLUMNS} FROM captions WHERE urgent = 1 AND node = ? "
                                 "ORDER BY start_ms DESC LIMIT 1", (node,)).fetchone()
        last = db.execute(f"SELECT {_COLUMNS} FROM captions WHERE node = ? ORDER BY start_ms DESC LIMIT 1",
                          (node,)).fetchone()
        open_ = db.execute(f"SELECT {_COLUMNS} FROM captions WHERE end_ms IS NULL AND node = ? AND start_ms >= ? "
                           "ORDER BY start_ms DESC LIMIT 20", (node, now_ms - OPEN_LOOKBACK_MS)).fetchall()
        return {
            "node": node,
            "day_start": iso(day_start_ms),
            "updated": iso(now_ms),
            "counts": counts,
            "total_today": sum(int(c["n"]) for c in counts.values()),
            "urgent_today": sum(int(c["urgent"]) for c in counts.values()),
            "last_urgent": row_json(last_urgent) if last_urgent else None,
            "last": row_json(last) if last else None,
            "open": [row_json(r) for r in open_],
        }

    def nodes(self) -> list[str]:
        """Every node with a caption stored, but those retired."""
        return [r[0] for r in self.db.execute(
            "SELECT DISTINCT node FROM captions WHERE node NOT IN (SELECT node FROM retired) ORDER BY node")]

    def retired(self) -> dict[str, int]:
        """The retired nodes: node -> when it was retired (epoch ms)."""
        return dict(self.db.execute("SELECT node, at_ms FROM retired"))

    def set_retired(self, node: str, at_ms: int | None) -> None:
        """Marks ``node`` retired at ``at_ms``, or (``None``) back in service.

        Its captions stay: a retired room's past can still be asked for.
        """
        with self._transaction() as db:
            if at_ms is None:
                db.execute("DELETE FROM retired WHERE node = ?", (node,))
            else:
                db.execute("INSERT OR REPLACE INTO retired (node, at_ms) VALUES (?, ?)", (node, at_ms))

    def count(self) -> int:
        """Captions stored."""
        return self.db.execute("SELECT COUNT(*) FROM captions").fetchone()[0]


def _write_error(path: Path, exc: sqlite3.Error) -> StoreError:
    code = getattr(exc, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL or "full" in str(exc):
        return DiskFull(f"{path}: cannot write the database: {exc} (free space on its disk, or lower "
                        "[history] retention_days / max_db_mb)")
    return StoreError(f"{path}: cannot write the database: {exc}")
