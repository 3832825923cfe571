"""Git servers on loopback that a test owns, for the faults a real Git host shows.

- `GitHttp`: a real `git http-backend` behind a small HTTP server (smart HTTP, no auth).
- `Proxy`: a TCP proxy in front of any server whose behaviour the test switches per new
  connection: `forward`, `hold` (accept and never answer, the hung host), `trickle` (forward
  the answer a few bytes at a time) or `drip` (an HTTP status line, then one header byte at a
  time, forever: a server that is never silent long enough for a read timeout).
- `Silent`: a listener that accepts every connection and never says anything.
- `Backlogged`: a listener whose accept queue is full, so a connect never completes.

Threads and sockets only; everything stops and closes when its `with` block ends, and no
connection outlives it. A pause in `trickle`/`drip` is the fault being played (a slow
server), not a test waiting for time to pass.
"""

from __future__ import annotations

import http.server
import os
import pathlib
import socket
import subprocess
import threading
from types import TracebackType
from typing import Literal, Self

Mode = Literal["forward", "hold", "trickle", "drip"]


class _Owned:
    """Sockets and threads to close and join on exit."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []

    def _own(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets.append(sock)
        return sock

    def _spawn(self, target: object, *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        with self._lock:
            self._threads.append(t)
        t.start()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            socks, threads = list(self._sockets), list(self._threads)
        for s in socks:
            _close(s)
        for t in threads:
            if t is not threading.current_thread():
                t.join(timeout=10)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def _listen(backlog: int = 64) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(backlog)
    return sock


class Silent(_Owned):
    """Accepts every connection and never sends a byte."""

    def __init__(self) -> None:
        super().__init__()
        self._server = self._own(_listen())
        self.port: int = self._server.getsockname()[1]
        self.accepted = 0
        self._spawn(self._accept)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self._own(conn)
            with self._lock:
                self.accepted += 1


class Backlogged(_Owned):
    """A port whose accept queue is full: the kernel drops new connection attempts, so a
    connect neither succeeds nor fails (the host that never completes the handshake)."""

    def __init__(self) -> None:
        super().__init__()
        self._server = self._own(_listen(backlog=0))
        self.port: int = self._server.getsockname()[1]
        for _ in range(4):  # fill the queue (backlog 0 holds one) and then some
            filler = self._own(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            filler.setblocking(False)
            try:
                filler.connect(("127.0.0.1", self.port))
            except BlockingIOError:
                pass


class GitHttp(_Owned):
    """Smart HTTP for every repository under `root` (`/<dir>.git`), served by `git
    http-backend` itself."""

    def __init__(self, root: pathlib.Path) -> None:
        super().__init__()
        handler = type("Handler", (_BackendHandler,), {"root": root})
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self.port: int = self._httpd.server_port
        self._spawn(self._httpd.serve_forever)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        super().close()


class _BackendHandler(http.server.BaseHTTPRequestHandler):
    root: pathlib.Path

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def _serve(self) -> None:
        path, _, query = self.path.partition("?")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        env = {
            "PATH": os.environ["PATH"],
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REQUEST_METHOD": self.command,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
        }
        out = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True, check=False
        ).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(": ")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = _serve
    do_POST = _serve


class Proxy(_Owned):
    """A TCP proxy to 127.0.0.1:`upstream`; `mode` decides what each new connection gets."""

    def __init__(self, upstream: int, *, chunk: int = 256, pause: float = 0.02) -> None:
        super().__init__()
        self.upstream = upstream
        self.mode: Mode = "forward"
        self.chunk = chunk
        self.pause = pause
        self._server = self._own(_listen())
        self.port: int = self._server.getsockname()[1]
        self.held = 0  # connections accepted in `hold` mode so far
        self._holding: list[socket.socket] = []
        self._spawn(self._accept)

    def release(self) -> None:
        """Close the connections held or dripped on so far (the host finally hangs up)."""
        with self._lock:
            held, self._holding = self._holding, []
        for s in held:
            _close(s)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self._own(conn)
            mode = self.mode
            if mode == "hold":
                with self._lock:
                    self._holding.append(conn)
                    self.held += 1
            elif mode == "drip":
                with self._lock:
                    self._holding.append(conn)
                self._spawn(self._drip, conn)
            else:
                up = self._own(socket.create_connection(("127.0.0.1", self.upstream)))
                self._spawn(self._pump, conn, up, 65536, 0.0)
                slow = mode == "trickle"
                self._spawn(self._pump, up, conn, self.chunk if slow else 65536, self.pause * slow)

    def _pump(self, src: socket.socket, dst: socket.socket, size: int, pause: float) -> None:
        try:
            while not self._stop.is_set():
                data = src.recv(size)
                if not data:
                    break
                dst.sendall(data)
                if pause and self._stop.wait(pause):
                    break
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _drip(self, conn: socket.socket) -> None:
        try:
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Drip: ")
            while not self._stop.wait(self.pause):
                conn.sendall(b"a")
        except OSError:
            pass
        finally:
            _close(conn)
