"""A write-ahead journal of messages that must reach the broker (captions, states).

The MQTT sink appends every caption and state message here *before* handing
it to paho, and marks it delivered when the broker's PUBACK arrives. What is
in the journal and not marked delivered is re-sent at the next start, first
and in order, and stays in the file until it is acknowledged; so a SIGKILL,
an OOM kill, a watchdog abort or a crash loses nothing that was journaled.

File format: JSON lines, UTF-8.

* ``{"seq": 7, "t": 1795474506.9, "topic": "...", "payload": "...", "retain": true}``
  a message (``"acked": true`` when a compaction kept a delivered one, see below);
* ``{"ack": 7}`` message 7 was acknowledged by the broker.

Durability. Every line is written with one ``write(2)`` at once, so it is in
the kernel when :meth:`Journal.append` returns and survives the death of the
process. A syncer thread ``fsync``\\ s it within :data:`SYNC_DELAY_S` (group
commit: an event and its state, written back to back, share one ``fsync``),
so a power cut loses at most the last :data:`SYNC_DELAY_S` plus one ``fsync``.
Acknowledgements are not synced on their own: a lost ``ack`` only means one
duplicate delivery, which QoS 1 allows.

A line torn by a crash (or by a full disk) is skipped and counted at load;
the file is then rewritten (compacted) with only what still matters, through
a temporary file, ``fsync`` and ``rename``. The same compaction runs while
the daemon works, once enough delivered lines have piled up.

Full disk: a write that fails is undone (the file is truncated back to its
last whole line), logged once and counted; the message is still handed to
paho, so it is only lost if the process also dies before the broker has it.

Memory bounded by disk. A message appended with ``on_disk=True`` (the MQTT
sink does so once its in-memory queue is full, during a long outage) is
written but not kept in memory; such messages form one run at the end of the
file, in order, and :meth:`Journal.read_back` reads them from there, oldest
first, when the sink has room to send them. A compaction copies that run
from the old file to the new one without reading it into memory.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from daemon.exitcodes import EX_CANTCREAT, ExitError

_LOGGER = logging.getLogger(__name__)

_SEQ = re.compile(rb'\{"seq": (\d+),')
"""The start of a message line as :meth:`Entry.line` writes it."""
SYNC_DELAY_S = 0.05
"""Group commit: lines are fsync'd at most this long after they were written
(plus the fsync itself); ``bench/journal.py`` measures what an fsync costs."""
COMPACT_MIN_DEAD = 1000
"""Compact once this many lines (and more than twice the live ones) are dead."""


class JournalError(ExitError):
    """The journal cannot be created, read or written at start-up (one line: path and reason)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EX_CANTCREAT)


@dataclass(frozen=True)
class Entry:
    """One journaled message.

    Attributes:
      seq: position in the journal (increasing, never reused within a file).
      topic: MQTT topic.
      payload: the message, as published.
      retain: the retain flag.
      t: wall-clock time it was journaled (UTC epoch seconds).
      acked: the broker has it (kept only as the start of a caption still open).
    """

    seq: int
    topic: str
    payload: str
    retain: bool
    t: float
    acked: bool = False

    def line(self) -> str:
        """The entry as one journal line."""
        item = {"seq": self.seq, "t": round(self.t, 3), "topic": self.topic, "payload": self.payload,
                "retain": self.retain}
        if self.acked:
            item["acked"] = True
        return json.dumps(item, ensure_ascii=False) + "\n"


@dataclass(frozen=True)
class Recovered:
    """What :meth:`Journal.recover` found and kept.

    Attributes:
      pending: unacknowledged messages now in memory, in order.
      on_disk: unacknowledged messages newer than ``pending``, left on disk only.
      open_starts: caption starts whose end is not in the file (a crash left them open).
      spilled_states: the state topics among the messages left on disk.
      torn: lines that could not be read.
      last_write: the file's mtime (0 when there was none).
    """

    pending: tuple[Entry, ...]
    on_disk: int
    open_starts: tuple[Entry, ...]
    spilled_states: frozenset[str]
    torn: int
    last_write: float


@dataclass(frozen=True)
class Loaded:
    """What :meth:`Journal.load` found.

    Attributes:
      entries: every message line, in order, with ``acked`` set for those
        whose acknowledgement is in the file.
      torn: lines that could not be read (a torn last line after a crash).
      last_write: when the file was last written (its mtime), UTC epoch
        seconds; 0 when there was no file.
    """

    entries: tuple[Entry, ...]
    torn: int
    last_write: float


class Journal:
    """An append-only, fsync'd message journal with acknowledgements.

    Args:
      path: the journal file; its directory must exist and be writable.
      sync_delay_s: group-commit delay; 0 syncs every write before returning.
    """

    def __init__(self, path: str | os.PathLike, sync_delay_s: float = SYNC_DELAY_S) -> None:
        self.path = Path(path)
        self.sync_delay_s = sync_delay_s
        self._lock = threading.Condition()
        self._fd = -1
        self._size = 0
        self._seq = 0
        self._live: dict[int, Entry] = {}  # not yet acknowledged, in order, in memory
        # Unacknowledged messages on disk only: the last `_on_disk` message lines of the file
        # from byte `_disk_offset` on (ack lines may be interleaved), all newer than `_live`.
        self._on_disk = 0
        self._disk_offset = 0
        self._disk_first_seq = 0
        self._rfd = -1
        self.last_on_disk = False
        """Whether the last :meth:`append` left its message on disk only (False if the write failed)."""
        self._kept: dict[int, Entry] = {}  # acknowledged but kept (open captions)
        self._dead = 0
        self._dirty = False
        self._closing = False
        self._syncer: threading.Thread | None = None
        self.counters = {"written": 0, "acked": 0, "write_errors": 0, "fsyncs": 0, "compactions": 0, "torn": 0}

    # --- start-up ---------------------------------------------------------------------------

    def check_writable(self) -> None:
        """Fails early (at start-up, not at exit) when the journal cannot be written.

        Raises:
          JournalError: naming the path and the reason.
        """
        d = self.path.parent
        if not d.is_dir():
            raise JournalError(f"[mqtt] spool_file: the directory of {self.path} does not exist")
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            os.close(fd)
            probe = d / f".{self.path.name}.probe"
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            os.close(fd)
            os.unlink(probe)  # compaction needs to create and rename files there
        except OSError as exc:
            raise JournalError(f"[mqtt] spool_file: cannot write {self.path}: {exc.strerror or exc}") from None

    def load(self) -> Loaded:
        """Reads what a previous run left (nothing is changed on disk)."""
        try:
            mtime = self.path.stat().st_mtime
            entries: dict[int, Entry] = {}
            acks: set[int] = set()
            torn = 0
            for kind, item in _scan(self.path):
                if kind == "ack":
                    acks.add(item)  # type: ignore[arg-type]
                elif kind == "msg":
                    entries[item.seq] = item  # type: ignore[union-attr]
                else:
                    torn += 1
        except FileNotFoundError:
            return Loaded((), 0, 0.0)
        except OSError as exc:
            raise JournalError(f"[mqtt] spool_file: cannot read {self.path}: {exc.strerror or exc}") from None
        out = tuple(Entry(e.seq, e.topic, e.payload, e.retain, e.t, e.acked or e.seq in acks)
                    for e in sorted(entries.values(), key=lambda x: x.seq))
        self.counters["torn"] += torn
        return Loaded(out, torn, mtime)

    def recover(self, memory_bound: int) -> Recovered:
        """What the last run left, with at most ``memory_bound`` messages read into memory;
        rewrites the file with only what still matters and opens it for appending.

        Two passes over the file (acknowledgements, then messages), so a journal
        of a long outage is never in memory whole: the newer pending messages
        stay on disk only, for :meth:`read_back`.

        Raises:
          JournalError: the file cannot be read or written.
        """
        try:
            mtime = self.path.stat().st_mtime if self.path.exists() else 0.0
            acks = {item for kind, item in _scan(self.path, acks_only=True)} if mtime else set()
            memory: list[Entry] = []
            opens: dict[str, Entry] = {}  # event_id -> its start, while no end was seen
            first, on_disk, torn, top, spilled = 0, 0, 0, 0, set()
            for kind, e in _scan(self.path) if mtime else ():
                if kind != "msg":
                    torn += kind == "torn"
                    continue
                if e.seq <= top:  # not in order: not a file this class wrote; read it whole
                    return self._recover_whole(memory_bound)
                top = e.seq
                if e.seq in acks and not e.acked:
                    e = Entry(e.seq, e.topic, e.payload, e.retain, e.t, True)
                _pair(opens, e)
                if e.acked:
                    continue
                if len(memory) < memory_bound:
                    memory.append(e)
                    continue
                first = first or e.seq
                on_disk += 1
                if "/state/" in e.topic:
                    spilled.add(e.topic)
        except OSError as exc:
            raise JournalError(f"[mqtt] spool_file: cannot read {self.path}: {exc.strerror or exc}") from None
        self.counters["torn"] += torn
        open_seqs = {e.seq for e in opens.values()}
        with self._lock:
            self._seq = top
            self._live = {e.seq: e for e in memory}
            self._kept = {e.seq: e for e in opens.values() if e.acked}
            self._on_disk, self._disk_first_seq = on_disk, first

            def tail() -> Iterator[bytes]:  # the messages left on disk, and open starts among them
                with open(self.path, "rb") as fh:
                    for line in fh:
                        m = _SEQ.match(line)
                        if m is None or not line.endswith(b"\n") or int(m.group(1)) < first:
                            continue  # an ack, a torn line, or one kept in memory
                        seq = int(m.group(1))
                        if seq not in acks:
                            yield line
                        elif seq in open_seqs:  # delivered, but its caption is open: kept, marked so
                            e = _parse(line.rstrip(b"\n"))
                            if e is not None:
                                yield Entry(e.seq, e.topic, e.payload, e.retain, e.t, True).line().encode("utf-8")

            try:
                self._rewrite_locked(tail() if on_disk else None)
            except OSError as exc:
                raise JournalError(f"[mqtt] spool_file: cannot write {self.path}: {exc.strerror or exc}") from None
        self._start_syncer()
        return Recovered(tuple(memory), on_disk, tuple(sorted(opens.values(), key=lambda e: e.seq)),
                         frozenset(spilled), torn, mtime)

    def _recover_whole(self, memory_bound: int) -> Recovered:
        loaded = self.load()
        opens: dict[str, Entry] = {}
        for e in loaded.entries:
            _pair(opens, e)
        keep = {e.seq: e for e in loaded.entries if not e.acked}
        keep.update({e.seq: e for e in opens.values()})
        pending = [e for e in loaded.entries if not e.acked]
        memory = self.open(keep.values(), memory_bound)
        spilled = frozenset(e.topic for e in pending[len(memory):] if "/state/" in e.topic)
        return Recovered(tuple(memory), len(pending) - len(memory),
                         tuple(sorted(opens.values(), key=lambda e: e.seq)), spilled, loaded.torn, loaded.last_write)

    def open(self, keep: Iterable[Entry], memory_bound: int | None = None) -> list[Entry]:
        """Rewrites the file with ``keep`` (in order, seq numbers kept) and opens it for appending.

        Args:
          keep: what the last run left that still matters (see :meth:`load`).
          memory_bound: keep at most this many unacknowledged messages in
            memory; the newer ones stay on disk only (see :meth:`read_back`).

        Returns:
          The unacknowledged messages kept in memory, in order.

        Raises:
          JournalError: the file cannot be written.
        """
        keep = sorted(keep, key=lambda e: e.seq)
        live = [e for e in keep if not e.acked]
        with self._lock:
            self._kept = {e.seq: e for e in keep if e.acked}
            self._seq = max((e.seq for e in keep), default=0)
            tail: list[Entry] = []
            if memory_bound is not None and len(live) > memory_bound:
                self._disk_first_seq = live[memory_bound].seq
                self._on_disk = len(live) - memory_bound
                live = live[:memory_bound]
                tail = [e for e in keep if e.seq >= self._disk_first_seq]
            self._live = {e.seq: e for e in live}
            try:
                self._rewrite_locked(tail)
            except OSError as exc:
                raise JournalError(f"[mqtt] spool_file: cannot write {self.path}: {exc.strerror or exc}") from None
        self._start_syncer()
        return live

    def _start_syncer(self) -> None:
        if self.sync_delay_s > 0:
            self._syncer = threading.Thread(target=self._sync_loop, name="audiocap-journal-sync", daemon=True)
            self._syncer.start()

    # --- writing ------------------------------------------------------------------------------

    def append(self, topic: str, payload: str, retain: bool, on_disk: bool = False) -> Entry:
        """Journals one message; returns its entry (``seq`` identifies it for :meth:`ack`).

        With ``on_disk`` the message is not kept in memory: :meth:`read_back`
        returns it later (:attr:`last_on_disk` says whether that happened).
        Once one message is on disk only, every later one is too, until
        :meth:`read_back` has returned them all (the run stays in order).

        A failed write (full disk) is undone, logged once and counted; the
        entry is still returned so the caller can deliver it from memory.
        """
        with self._lock:
            self._seq += 1
            e = Entry(self._seq, topic, payload, retain, time.time())
            offset = self._size
            self.last_on_disk = False
            if self._write_locked(e.line()):
                self.counters["written"] += 1
                if on_disk or self._on_disk:
                    if not self._on_disk:
                        self._disk_offset, self._disk_first_seq = offset, e.seq
                    self._on_disk += 1
                    self.last_on_disk = True
                else:
                    self._live[e.seq] = e
                if self.sync_delay_s <= 0:
                    self._fsync_locked()
            return e

    @property
    def on_disk(self) -> int:
        """Unacknowledged messages kept on disk only (see :meth:`read_back`)."""
        return self._on_disk

    def read_back(self, n: int) -> list[Entry]:
        """The oldest ``n`` (at most) messages kept on disk only, now kept in memory like the others.

        Raises:
          OSError: the file cannot be read (the messages stay on disk).
        """
        out: list[Entry] = []
        with self._lock:
            if self._rfd < 0:
                self._rfd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            while self._on_disk and len(out) < n:
                chunk = os.pread(self._rfd, 1 << 16, self._disk_offset)
                end = chunk.rfind(b"\n") + 1
                if end == 0:
                    if not chunk:  # the run is shorter than counted (a line lost): stop counting it
                        self._on_disk = 0
                        break
                    chunk = os.pread(self._rfd, max(1 << 20, 4 * len(chunk)), self._disk_offset)
                    end = chunk.rfind(b"\n") + 1
                    if end == 0:
                        raise OSError(f"a journal line at byte {self._disk_offset} has no end")
                consumed = 0
                for line in chunk[:end].split(b"\n")[:-1]:
                    consumed += len(line) + 1
                    e = _parse(line)
                    if e is None or e.acked or e.seq < self._disk_first_seq:
                        continue  # a torn line, or an open caption's start kept after delivery
                    self._live[e.seq] = e
                    self._on_disk -= 1
                    self._disk_first_seq = e.seq + 1
                    out.append(e)
                    if len(out) >= n or not self._on_disk:
                        break
                self._disk_offset += consumed
        return out


    def ack(self, seq: int) -> None:
        """Marks message ``seq`` delivered (no fsync: a lost ack is a duplicate, not a loss)."""
        with self._lock:
            if self._live.pop(seq, None) is None:
                return
            self.counters["acked"] += 1
            self._dead += 1
            if self._write_locked(json.dumps({"ack": seq}) + "\n"):
                self._dead += 1

    def keep(self, entry: Entry) -> None:
        """Keeps ``entry`` through compactions even once delivered (a caption start
        still open: a crash must be able to end it at the next start)."""
        with self._lock:
            self._kept[entry.seq] = Entry(entry.seq, entry.topic, entry.payload, entry.retain, entry.t, True)

    def release(self, seqs: Iterable[int]) -> None:
        """Stops keeping the given entries (their caption ended)."""
        with self._lock:
            for seq in seqs:
                self._kept.pop(seq, None)

    def maybe_compact(self) -> None:
        """Rewrites the file when delivered lines outnumber the live ones (cheap to call often)."""
        with self._lock:
            live = len(self._live) + len(self._kept) + self._on_disk
            if self._fd < 0 or self._dead < max(COMPACT_MIN_DEAD, 2 * live):
                return
            try:
                self._rewrite_locked()
            except OSError as exc:  # keep appending to the old file; try again later
                self._dead = 0
                _LOGGER.warning("cannot compact the journal %s: %s", self.path, exc.strerror or exc)

    @property
    def pending(self) -> int:
        """Messages journaled and not yet acknowledged (in memory and on disk only)."""
        with self._lock:
            return len(self._live) + self._on_disk

    def close(self) -> None:
        """Syncs; removes the file when nothing in it matters any more."""
        with self._lock:
            self._closing = True
            self._lock.notify_all()
            if self._fd < 0:
                return
            try:
                if not self._live and not self._kept and not self._on_disk:
                    os.close(self._fd)
                    self._fd = -1
                    self.path.unlink(missing_ok=True)
                    return
                self._rewrite_locked()
            except OSError as exc:
                _LOGGER.warning("cannot finish the journal %s: %s", self.path, exc.strerror or exc)
            finally:
                if self._fd >= 0:
                    self._fsync_locked()
                    os.close(self._fd)
                    self._fd = -1
                if self._rfd >= 0:
                    os.close(self._rfd)
                    self._rfd = -1
        if self._syncer is not None:
            self._syncer.join(timeout=1.0)

    # --- internals (caller holds _lock) ---------------------------------------------------------------

    def _write_locked(self, line: str) -> bool:
        if self._fd < 0:
            return False
        data = line.encode("utf-8")
        try:
            n = os.write(self._fd, data)
            if n != len(data):
                raise OSError(28, f"short write ({n} of {len(data)} bytes)")
        except OSError as exc:
            # Undo the torn tail so the next line starts on a line of its own.
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                pass
            self.counters["write_errors"] += 1
            if self.counters["write_errors"] == 1 or self.counters["write_errors"] % 1000 == 0:
                _LOGGER.error("cannot write the journal %s (%s): %d message(s) so far are kept in memory only",
                              self.path, exc.strerror or exc, self.counters["write_errors"])
            return False
        self._size += n
        if not self._dirty:
            self._dirty = True
            self._lock.notify_all()
        return True

    def _fsync_locked(self) -> None:
        if self._fd >= 0 and self._dirty:
            try:
                os.fsync(self._fd)
                self.counters["fsyncs"] += 1
            except OSError as exc:
                _LOGGER.warning("fsync of the journal %s failed: %s", self.path, exc.strerror or exc)
            self._dirty = False

    def _rewrite_locked(self, tail: list[Entry] | Iterator[bytes] | None = None) -> None:
        # A start still open may be both live (unacknowledged) and kept: once, as live. A kept
        # start that is still on disk only is in the run copied below.
        first_on_disk = self._disk_first_seq if self._on_disk else float("inf")
        entries = sorted({**{s: e for s, e in self._kept.items() if s < first_on_disk}, **self._live}.values(),
                         key=lambda e: e.seq)
        data = "".join(e.line() for e in entries).encode("utf-8")
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, data)
            if isinstance(tail, list) and tail:  # open(): the messages left on disk only, in memory once
                tail_bytes = _write_all(fd, "".join(e.line() for e in tail).encode("utf-8"))
            elif tail is not None:  # recover(): streamed from the old file
                tail_bytes = _write_lines(fd, tail)
            else:
                tail_bytes = self._copy_on_disk_locked(fd) if self._on_disk else 0
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        self._disk_offset = len(data)
        data_len = len(data) + tail_bytes
        os.replace(tmp, self.path)
        try:  # the rename itself must survive a power cut
            dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass
        if self._fd >= 0:
            os.close(self._fd)
        if self._rfd >= 0:  # the old file: read the new one from now on
            os.close(self._rfd)
            self._rfd = -1
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self._size = data_len
        self._dead = 0
        self._dirty = False
        self.counters["compactions"] += 1

    def _copy_on_disk_locked(self, fd: int) -> int:
        """Copies the run of on-disk messages (not the ack lines between them) from the
        current file to ``fd``, a line at a time; returns the bytes written."""
        with open(self.path, "rb") as fh:
            fh.seek(self._disk_offset)
            return _write_lines(fd, (ln for ln in fh if ln.endswith(b"\n") and not ln.startswith(b'{"ack"')))

    def _sync_loop(self) -> None:
        while True:
            with self._lock:
                while not self._closing and not self._dirty:
                    self._lock.wait(1.0)
                if self._closing:
                    return
            # Let the pair (event, state) written back to back share one fsync.
            time.sleep(self.sync_delay_s)
            with self._lock:
                if self._fd < 0 or not self._dirty:
                    continue
                # fsync a duplicate outside the lock: appends (the caption
                # thread) never wait for the disk. A compaction meanwhile only
                # makes this sync an old inode, which it already synced itself.
                fd = os.dup(self._fd)
                self._dirty = False
            try:
                os.fsync(fd)
                self.counters["fsyncs"] += 1
            except OSError as exc:
                _LOGGER.warning("fsync of the journal %s failed: %s", self.path, exc.strerror or exc)
            finally:
                os.close(fd)


def _write_all(fd: int, data: bytes) -> int:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    return len(data)


def _parse(line: bytes) -> Entry | None:
    """A message line as an entry; ``None`` for an ack line or a torn one."""
    if not line.strip() or line.startswith(b'{"ack"'):
        return None
    try:
        item = json.loads(line)
        return Entry(int(item["seq"]), str(item["topic"]), str(item["payload"]), bool(item["retain"]),
                     float(item.get("t", 0.0)), bool(item.get("acked", False)))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _write_lines(fd: int, lines: Iterable[bytes]) -> int:
    """Writes ``lines`` to ``fd`` a thousand at a time; returns the bytes written."""
    written = 0
    batch: list[bytes] = []
    for line in lines:
        batch.append(line)
        if len(batch) >= 1000:
            written += _write_all(fd, b"".join(batch))
            batch.clear()
    return written + (_write_all(fd, b"".join(batch)) if batch else 0)


def _scan(path: Path, acks_only: bool = False) -> Iterator[tuple[str, Any]]:
    """The lines of a journal file, streamed: ``("msg", Entry)``, ``("ack", seq)`` or
    ``("torn", None)``; with ``acks_only`` only the acks (the rest is not parsed)."""
    with open(path, "rb") as fh:
        for line in fh:
            line = line.rstrip(b"\n")
            if not line.strip():
                continue
            if line.startswith(b'{"ack"'):
                try:
                    yield "ack", int(json.loads(line)["ack"])
                    continue
                except (ValueError, KeyError, TypeError):
                    pass
            if acks_only:
                continue
            e = _parse(line)
            yield ("msg", e) if e is not None else ("torn", None)


def _pair(opens: dict[str, Entry], e: Entry) -> None:
    """Tracks caption starts without their end: ``opens`` maps event_id -> start."""
    if not e.topic.endswith("/events"):
        return
    try:
        ev = json.loads(e.payload)
        eid, kind = str(ev["event_id"]), ev["type"]
    except (ValueError, KeyError, TypeError):
        return
    if kind == "start":
        opens[eid] = e
    else:
        opens.pop(eid, None)
