"""On-disk store-and-forward queue: every sampled reading is durable before it is sent, removed only on PUBACK.

One SQLite file (WAL) holds the queues of every device a process runs, keyed by device id, beside each
device's counters: the next sequence number, the next trace time to sample, the energy spent on readings and
bytes, and how many readings a full buffer dropped. Each `append` is one transaction that assigns the
sequence number, stores the reading, drops the oldest reading when the profile's capacity is reached, and
advances the counters, so a process killed at any instant restarts with consistent numbering: it resumes
its sequence numbers and resends whatever was not acknowledged (the gateway dedups by (device, epoch, seq)).

Each device's row also holds its epoch: a random identifier drawn when the row is created, i.e. whenever the
device starts from a fresh state (first start, re-imaged hub, a temporary state directory). It goes out with
every batch, so the gateway keeps a reset device's readings apart from the old ones with the same sequence numbers.

WAL with ``synchronous=NORMAL`` makes a committed transaction survive a process kill (SIGKILL); only an OS
crash or power loss can drop the last transactions, which is what a wearable's flash ring also risks.
Single writer per device; a process may share one `Spool` among many devices (one asyncio thread), and
then commits in groups (see `Spool`).
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from device.errors import SpoolError
from federation.telemetry import GLUCOSE, MAX_EPOCH, STREAMS, Reading

SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    device TEXT NOT NULL, seq INTEGER NOT NULL, t INTEGER NOT NULL, value REAL NOT NULL,
    stream INTEGER NOT NULL DEFAULT 0,  -- index into federation.telemetry.STREAMS
    PRIMARY KEY (device, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    device TEXT PRIMARY KEY, next_seq INTEGER NOT NULL, next_t INTEGER NOT NULL, born_t INTEGER NOT NULL,
    energy_uj REAL NOT NULL, dropped INTEGER NOT NULL, capacity INTEGER NOT NULL, epoch INTEGER NOT NULL,
    next_k INTEGER NOT NULL DEFAULT 0  -- with next_t: the stream index of the next plan item to take
);
"""


def new_epoch() -> int:
    """A device epoch, uniform in [1, MAX_EPOCH] (an identifier, from the OS CSPRNG so devices never collide)."""
    return 1 + secrets.randbelow(MAX_EPOCH)


@dataclass
class SpoolState:
    next_seq: int
    next_t: int  # simulated unix seconds of the next plan item to take (0: none taken yet)
    born_t: int  # simulated time of the first reading this device sampled (0: none yet)
    energy_uj: float  # energy spent on readings and transmitted bytes (idle power is a function of time)
    dropped: int  # readings dropped because the buffer was full
    epoch: int  # this device state's identity (see the module docstring)
    next_k: int = 0  # the stream index of the next plan item at next_t (items at one time go in stream order)


class Spool:
    """The SQLite file; `device()` gives one device's queue.

    With ``group_commit`` (the fleet runner), appends, acks and counters are staged in memory and written
    by `flush` in one transaction for every device (call `run_group_commit` in the event loop); a reading
    becomes visible to `peek` only once flushed, so nothing is sent before it is durable. A kill loses only
    staged work, which the restarted device redoes identically: its sequence number and next sample time
    were not advanced on disk either. Without it, every call commits at once.
    """

    def __init__(self, path: Path, *, group_commit: bool = False) -> None:
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.executescript(SCHEMA)
            cols = [r[1] for r in self._db.execute("PRAGMA table_info(meta)")]
            if "epoch" not in cols:  # a spool from before epochs
                self._db.execute("ALTER TABLE meta ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0")
            if "next_k" not in cols:  # ... or before streams
                self._db.execute("ALTER TABLE meta ADD COLUMN next_k INTEGER NOT NULL DEFAULT 0")
            if "stream" not in [r[1] for r in self._db.execute("PRAGMA table_info(queue)")]:
                self._db.execute("ALTER TABLE queue ADD COLUMN stream INTEGER NOT NULL DEFAULT 0")
        except (OSError, sqlite3.Error) as exc:
            raise SpoolError(f"cannot open store-and-forward queue {path}: {exc}") from exc
        self.path = path
        self.group_commit = group_commit
        self._inserts: list[tuple] = []
        self._deletes: list[tuple] = []
        self._dirty: dict[str, DeviceQueue] = {}
        self._on_flush: list[Callable[[], None]] = []

    def close(self) -> None:
        self.flush()
        self._db.close()

    def device(self, device_id: str, *, capacity: int, on_durable: Callable[[], None] | None = None) -> DeviceQueue:
        return DeviceQueue(self, device_id, capacity=capacity, on_durable=on_durable)

    def _staged(self, q: DeviceQueue) -> None:
        self._dirty[q.device] = q
        if not self.group_commit:
            self.flush()

    def flush(self) -> None:
        """Write everything staged in one transaction, then let each device send what became durable."""
        if not self._dirty:
            return
        dirty, inserts, deletes = self._dirty, self._inserts, self._deletes
        self._dirty, self._inserts, self._deletes = {}, [], []
        if deletes and inserts:  # a reading staged and dropped (buffer full) within one group is never written
            gone = set(deletes)
            inserts = [row for row in inserts if row[:2] not in gone]
        meta = [(q.state.next_seq, q.state.next_t, q.state.next_k, q.state.born_t, q.state.energy_uj,
                 q.state.dropped, q.device) for q in dirty.values()]
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                if deletes:
                    self._db.executemany("DELETE FROM queue WHERE device=? AND seq=?", deletes)
                if inserts:
                    self._db.executemany("INSERT OR REPLACE INTO queue (device, seq, t, value, stream) "
                                         "VALUES (?,?,?,?,?)", inserts)
                self._db.executemany("UPDATE meta SET next_seq=?, next_t=?, next_k=?, born_t=?, energy_uj=?, "
                                     "dropped=? WHERE device=?", meta)
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot write store-and-forward queue {self.path}: {exc}") from exc
        for q in dirty.values():
            q._durable_next = q._staged_next
            if q._on_durable is not None:
                q._on_durable()

    async def run_group_commit(self, interval_s: float = 0.01) -> None:
        """Flush every `interval_s` until cancelled (one transaction per tick for the whole fleet)."""
        try:
            while True:
                await asyncio.sleep(interval_s)
                self.flush()
        finally:
            self.flush()


class DeviceQueue:
    """One device's bounded queue: append (durable), peek the oldest, acknowledge by sequence number."""

    def __init__(self, spool: Spool, device: str, *, capacity: int,
                 on_durable: Callable[[], None] | None = None) -> None:
        if capacity < 1:
            raise SpoolError(f"{device}: capacity must be >= 1, got {capacity}")
        self._spool, self.device, self.capacity, self._on_durable = spool, device, capacity, on_durable
        db = spool._db
        try:
            db.execute("INSERT OR IGNORE INTO meta (device, next_seq, next_t, born_t, energy_uj, dropped, capacity, "
                       "epoch) VALUES (?, 0, 0, 0, 0.0, 0, ?, ?)", (device, capacity, new_epoch()))
            db.execute("UPDATE meta SET epoch=? WHERE device=? AND epoch=0", (new_epoch(), device))
            row = db.execute("SELECT next_seq, next_t, born_t, energy_uj, dropped, epoch, next_k FROM meta "
                             "WHERE device=?", (device,)).fetchone()
            rows = db.execute("SELECT seq, t, value, stream FROM queue WHERE device=? ORDER BY seq",
                              (device,)).fetchall()
        except sqlite3.Error as exc:
            raise SpoolError(f"{device}: cannot read its queue: {exc}") from exc
        self.state = SpoolState(*row)
        if rows and rows[-1][0] >= self.state.next_seq:
            raise SpoolError(f"{device}: queue holds seq {rows[-1][0]} but the next sequence number is "
                             f"{self.state.next_seq}; the spool is inconsistent")
        self._mem: deque[Reading] = deque(Reading(seq=q, t=t, value=v, stream=STREAMS[k]) for q, t, v, k in rows)
        self._durable_next = self._staged_next = self.state.next_seq

    def __len__(self) -> int:
        """Readings held (durable or staged) and not yet acknowledged."""
        return len(self._mem)

    def on_durable(self, callback: Callable[[], None]) -> None:
        """Call `callback` after each flush that made this device's readings durable."""
        self._on_durable = callback

    def append(self, t: int, value: float, *, energy_uj: float = 0.0, next_t: int, next_k: int = 0,
               stream: str = GLUCOSE) -> int:
        """Store one release and return its sequence number; drops the oldest one when full."""
        s = self.state
        seq = s.next_seq
        if len(self._mem) >= self.capacity:
            old = self._mem.popleft()
            self._spool._deletes.append((self.device, old.seq))
            s.dropped += 1
        self._mem.append(Reading(seq=seq, t=int(t), value=float(value), stream=stream))
        self._spool._inserts.append((self.device, seq, int(t), float(value), STREAMS.index(stream)))
        s.next_seq, s.next_t, s.next_k, s.born_t = seq + 1, next_t, next_k, s.born_t or int(t)
        s.energy_uj += energy_uj
        self._staged_next = seq + 1
        self._spool._staged(self)
        return seq

    def peek(self, limit: int) -> list[Reading]:
        """The oldest `limit` durable readings still unacknowledged, in sequence order."""
        out = []
        for r in self._mem:
            if len(out) >= limit or r.seq >= self._durable_next:
                break
            out.append(r)
        return out

    def ack(self, seqs: list[int], *, energy_uj: float = 0.0) -> None:
        """The broker acknowledged these readings: forget them (and charge the energy spent sending)."""
        gone = set(seqs)
        if self._mem and self._mem[0].seq in gone:
            while self._mem and self._mem[0].seq in gone:
                self._mem.popleft()
        if any(r.seq in gone for r in self._mem):
            self._mem = deque(r for r in self._mem if r.seq not in gone)
        self._spool._deletes.extend((self.device, q) for q in seqs)
        self.state.energy_uj += energy_uj
        self._spool._staged(self)
