"""Follow Mosquitto's log file and pick out ACL denials.

Mosquitto 2.0 (Debian's 2.0.11, checked against a running broker) writes, for a PUBLISH its ACL refuses::

    1796398325: Denied PUBLISH from gw-1-dev001 (d0, q1, r0, m1, 'wearfed/v1/gw-1/gw-1-dev002/readings', ... (1 bytes))

at log level *debug* only (``log_type debug`` or ``log_type all`` in mosquitto.conf; with the default log types
the line is never written). The name after "from" is the client id, which ``use_username_as_clientid`` (set by
`wearfed provision`) makes the username. A SUBSCRIBE outside the ACL is not logged as denied by this broker: it is
granted and matching messages are simply not delivered (the SUBACK grants QoS 0), so only publishes are seen.

`LogTail` reads what was appended since the last call, from the end of the file at start (denials logged before
the watcher ran are history, not a burst). It survives rotation (a new inode at the path: the old file is read to
its end, then the new one from its start), truncation in place (size below the offset: read from the start), a
missing file (nothing until it appears), bytes that are not UTF-8 (replaced), and lines longer than `max_line`
(dropped whole and counted, never held in memory).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

MAX_LINE = 8192  # bytes; a denial line is ~200 bytes plus the topic (MQTT topics may be 64 KiB, ours are short)
READ_CHUNK = 1 << 20  # bytes read per call at most, so one call never blocks the event loop for long
_DENIED = re.compile(r"Denied PUBLISH from (?P<client>[^\s()]{1,256}) \(d[01], q[0-2], r[01], m\d{1,5}, "
                     r"'(?P<topic>.{0,1024})', \.\.\. \((?P<bytes>\d{1,12}) bytes\)\)$")


@dataclass(frozen=True)
class Denial:
    client: str  # the client id (the username under use_username_as_clientid)
    topic: str
    payload_bytes: int


def parse_denial(line: str) -> Denial | None:
    """The ACL denial a log line records, or None for any other line (malformed ones included)."""
    m = _DENIED.search(line.rstrip("\r\n"))
    if m is None:
        return None
    return Denial(client=m["client"], topic=m["topic"], payload_bytes=int(m["bytes"]))


class LogTail:
    def __init__(self, path: Path, *, max_line: int = MAX_LINE, from_start: bool = False) -> None:
        self.path = path
        self.max_line = max_line
        self.lines_read = 0
        self.long_lines_dropped = 0
        self.rotations = 0
        self.truncations = 0
        self._fh: BinaryIO | None = None
        self._inode: int | None = None
        self._pos = 0
        self._partial = bytearray()
        self._skipping = False  # inside an over-long line: drop bytes up to its newline
        self._eof = True
        self._open(at_end=not from_start)

    def _open(self, *, at_end: bool) -> None:
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 - kept open across calls (rotation is detected by inode)
        except OSError:
            return
        self._fh, self._inode = fh, os.fstat(fh.fileno()).st_ino
        self._pos = fh.seek(0, os.SEEK_END) if at_end else 0
        self._partial.clear()
        self._skipping = False

    @property
    def caught_up(self) -> bool:
        """The last read reached the end of the file (else more is waiting)."""
        return self._eof

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def read_lines(self) -> list[str]:
        """Complete lines appended since the last call (a line still being written waits for its newline)."""
        if self._fh is None:
            self._open(at_end=False)  # appeared after start: everything in it is new
            if self._fh is None:
                return []
        out = self._read_available()
        try:
            st = os.stat(self.path)
        except OSError:
            return out  # moved away and not recreated yet: keep reading the old file next time
        if st.st_ino != self._inode:  # rotated: switch once the old file is read to its end
            if not self._eof:
                return out
            self.rotations += 1
            self.close()
            self._open(at_end=False)
            out += self._read_available()
        elif st.st_size < self._pos:  # truncated in place (copytruncate)
            self.truncations += 1
            self._pos = 0
            self._fh.seek(0)  # type: ignore[union-attr]
            self._partial.clear()
            self._skipping = False
            out += self._read_available()
        return out

    def _read_available(self) -> list[str]:
        assert self._fh is not None
        self._fh.seek(self._pos)
        data = self._fh.read(READ_CHUNK)
        self._pos += len(data)
        self._eof = len(data) < READ_CHUNK
        lines: list[str] = []
        start = 0
        while True:
            nl = data.find(b"\n", start)
            piece = data[start:] if nl < 0 else data[start:nl]
            if self._skipping:
                if nl >= 0:
                    self._skipping = False
            elif len(self._partial) + len(piece) > self.max_line:
                self.long_lines_dropped += 1
                self._partial.clear()
                self._skipping = nl < 0
            elif nl >= 0:
                self._partial += piece
                lines.append(self._partial.decode("utf-8", errors="replace"))
                self._partial.clear()
            else:
                self._partial += piece
            if nl < 0:
                break
            start = nl + 1
        self.lines_read += len(lines)
        return lines
