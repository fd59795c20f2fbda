"""A loopback TCP relay that can be cut and restored: how a replay partitions one gateway from the network.

The gateway is pointed at the relay instead of the broker or cloud; `cut()` closes every relayed connection
and refuses new ones (as a dropped link would), `restore()` accepts again. Runs on its own event-loop thread.
`tap`, when set, is given every chunk the client sends upstream: what an eavesdropper on a plain-HTTP link sees
(the attack drill, sim/attack_drill.py, captures a genuine submission with it to replay).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable

from sim.broker import free_port


class TcpRelay:
    def __init__(self, target_host: str, target_port: int, *, listen_port: int | None = None) -> None:
        self.target = (target_host, target_port)
        self.port = listen_port or free_port()
        self._cut = False
        self.tap: Callable[[bytes], None] | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"relay-{self.port}", daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._accept, "127.0.0.1", self.port), self._loop).result(timeout=10)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, upstream: bool = False) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    if upstream and self.tap is not None:
                        self.tap(data)
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer, upstream=True), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}

    def cut(self) -> None:
        def _cut() -> None:
            self._cut = True
            for w in list(self._writers):
                w.close()

        self._loop.call_soon_threadsafe(_cut)

    def restore(self) -> None:
        self._loop.call_soon_threadsafe(setattr, self, "_cut", False)

    def close(self) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
