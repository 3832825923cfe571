"""A TCP gate a test holds in front of a real server, to make it go away and come back.

`Gate(upstream)` listens on a loopback port of its own and, while open, forwards every
connection to `upstream` byte for byte (TLS passes through untouched, so a kubeconfig pointed at
the gate still trusts the real API server's certificate). `close()` is a stopped server: the
listener goes away (new connections are refused) and every connection in flight is reset.
`hang()` is a hung server: connections are accepted and never answered. `open()` forwards
again, on the same port. A gate without an upstream can only hang or be closed.

It runs its own event loop in a thread, so tests that block (subprocesses, sync gRPC) do not
stall it. It must never keep a port or a thread after `stop()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
_FORWARD, _HANG, _CLOSED = "forward", "hang", "closed"


class Gate:
    def __init__(self, upstream: tuple[str, int] | None = None) -> None:
        self.upstream = upstream
        self.port = 0
        self.mode = _CLOSED
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._held: set[asyncio.StreamWriter] = set()
        self._thread.start()

    def _do(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    # ------------------------------------------------------------ what the test does

    def open(self) -> Gate:
        """Forward to the upstream (listening again if closed)."""
        assert self.upstream is not None, "a gate without an upstream can only hang"
        self._do(self._set(_FORWARD))
        return self

    def hang(self) -> Gate:
        """Accept and never answer; connections in flight are reset."""
        self._do(self._set(_HANG))
        return self

    def close(self) -> Gate:
        """Refuse new connections and reset those in flight, as a stopped server would."""
        self._do(self._set(_CLOSED))
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self._do(self._shutdown())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        if not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ inside the gate's loop

    async def _set(self, mode: str) -> None:
        self.mode = mode
        for writer in [*self._conns, *self._held]:
            writer.transport.abort()  # a reset, as when the server process dies
        self._conns.clear()
        self._held.clear()
        if mode == _CLOSED:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
                self._server = None
            return
        if self._server is None:
            self._server = await asyncio.start_server(
                self._accept, "127.0.0.1", self.port, reuse_address=True
            )
            self.port = int(self._server.sockets[0].getsockname()[1])

    async def _shutdown(self) -> None:
        """Closed, and every connection's task ended: none is left pending in the loop."""
        await self._set(_CLOSED)
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == _CLOSED:  # accepted just before the listener closed: a stopped server
            writer.transport.abort()
            return
        if self.mode == _HANG or self.upstream is None:
            self._held.add(writer)  # read nothing, answer nothing, until the test says
            return
        self._conns.add(writer)  # known at once: a close while we dial upstream resets it too
        up_writer: asyncio.StreamWriter | None = None
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            except OSError:
                return
            if writer not in self._conns:  # the gate closed or hung while we dialled
                return
            self._conns.add(up_writer)
            await asyncio.gather(
                self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
            )
        finally:  # also when stop() cancels this task: no socket outlives the gate
            for w in (writer, up_writer):
                if w is not None:
                    self._conns.discard(w)
                    w.transport.abort()

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
        with contextlib.suppress(OSError):
            dst.write_eof()
