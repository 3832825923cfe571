"""Network faults a test controls, on loopback: a TCP proxy that can be partitioned, and a
listener that accepts and never answers.

- `Partition`: forwards a listening address to an upstream one. `cut()` black-holes it: every
  open connection stays open but the bytes both ways are read and dropped, and a connection
  made meanwhile is accepted and black-holed too, as a peer behind a silent firewall looks.
  `heal()` forwards new connections again and closes the black-holed ones: they lost bytes
  and can never carry their streams again, and after a real partition each end learns that
  as soon as packets flow (the peer that gave up meanwhile answers with a reset).
- `Silent`: accepts every connection and never sends a byte (a hung API server or Git host).

Threads and blocking sockets only, so an asyncio test's blocking probes never stall them.
Everything closes when the `with` block ends; no thread or socket outlives it.
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType
from typing import Self


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class _Owned:
    def __init__(self, host: str, port: int) -> None:
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind((host, port))
        self._server.listen(128)
        self.host = host
        self.port: int = self._server.getsockname()[1]
        self.accepted = 0  # connections accepted so far

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _own(self, sock: socket.socket) -> bool:
        """Track `sock` for closing; False (and closed) when the owner is closing already."""
        with self._lock:
            if self._closed.is_set():
                sock.close()
                return False
            self._sockets.append(sock)
            return True

    def _spawn(self, target: object, *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        with self._lock:
            self._threads.append(t)
        t.start()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            if not self._own(conn):
                return
            with self._lock:
                self.accepted += 1
            self._accepted(conn)

    def _accepted(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._closed.set()
        _shut(self._server)
        with self._lock:
            socks, threads = list(self._sockets), list(self._threads)
        for s in socks:
            _shut(s)
        for t in threads:
            t.join(timeout=10)

    def __enter__(self) -> Self:
        self._spawn(self._accept_loop)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Silent(_Owned):
    """Accepts every connection and never answers; the connections stay open until close."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)

    def _accepted(self, conn: socket.socket) -> None:
        pass  # held open, never read, never written


class _Link:
    """One client connection and, unless it was made during a cut, its upstream."""

    def __init__(self, client: socket.socket, upstream: socket.socket | None) -> None:
        self.client = client
        self.upstream = upstream
        self.cut = upstream is None


class Partition(_Owned):
    """A TCP proxy from `host:port` (port 0: any free one) to `upstream` that can be cut."""

    def __init__(self, upstream: tuple[str, int], *, host: str = "127.0.0.1", port: int = 0):
        super().__init__(host, port)
        self.upstream = upstream
        self._cut = False
        self._links: list[_Link] = []
        self.dropped = 0  # bytes black-holed so far

    @property
    def is_cut(self) -> bool:
        return self._cut

    def cut(self) -> None:
        """Black-hole every connection, open or new: held open, every byte dropped."""
        with self._lock:
            self._cut = True
            for link in self._links:
                link.cut = True

    def heal(self) -> None:
        """New connections are forwarded again; the black-holed ones are closed, both ends."""
        with self._lock:
            self._cut = False
            dead = [link for link in self._links if link.cut]
            self._links = [link for link in self._links if not link.cut]
        for link in dead:
            for sock in (link.client, link.upstream):
                if sock is not None:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

    def _accepted(self, conn: socket.socket) -> None:
        up: socket.socket | None = None
        if not self._cut:
            try:
                up = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                _shut(conn)  # upstream down: the client sees its connection closed
                return
            up.settimeout(None)
            if not self._own(up):
                return
        link = _Link(conn, up)
        with self._lock:
            if self._cut:
                link.cut = True
            self._links.append(link)
        self._spawn(self._pump, link, conn, up)
        if up is not None:
            self._spawn(self._pump, link, up, conn)

    def _pump(self, link: _Link, src: socket.socket, dst: socket.socket | None) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if link.cut or dst is None:
                    with self._lock:
                        self.dropped += len(data)
                    continue  # the partition: the bytes go nowhere, the connection stays up
                dst.sendall(data)
        except OSError:
            pass
        # One end hung up. A forwarding link passes that on to the other end; across a cut
        # nothing gets through, so only the end that hung up sees its connection closed.
        for s in (src,) if link.cut else (link.client, link.upstream):
            if s is not None:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
