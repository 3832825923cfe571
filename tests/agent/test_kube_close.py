"""Closing the agent's Kubernetes client leaves no connection open: not one a request still
running on a thread (its caller was cancelled, or it was mid-way through a two-step lookup)
gives back or makes after `close`, not one a watch holds, and a closed client opens none.

The API server here is a fake (the test is about the client's sockets, not about Kubernetes): a
loopback TLS server speaking just enough HTTP/1.1, that can hold an answer until the test (or
the client) does something, and that counts the connections the client has not closed yet.
Without deterministic closing these connections stay open until the garbage collector finds
them, and pytest fails some later test with an unclosed `ssl.SSLSocket` ResourceWarning."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import pathlib
import socket
import ssl
import threading
from collections.abc import Iterator

import pytest
import yaml

from fleetops.agent import errors, kube
from fleetops.hub import ca
from tests.support import wait

CM = kube.ResourceType(
    group="", version="v1", kind="ConfigMap", plural="configmaps", namespaced=True
)
DISCOVERY = "/apis/example.com/v1"  # a group the fake serves no kinds in


class FakeApiServer:
    """Answers GET /version, GET `DISCOVERY` (no resources) and watches (headers, then
    nothing). `version_together(n)` holds the /version answers until n of them wait (so the
    client opens n connections); `hold_discovery()` holds the first discovery answer until the
    client closes another connection (as its `close` closes the idle ones)."""

    def __init__(self, tmp: pathlib.Path) -> None:
        authority = ca.load_or_create(tmp / "ca")
        serving = ca.serving_cert(tmp / "serving", authority, ["127.0.0.1"])
        (tmp / "key.pem").write_bytes(serving.key_pem)
        (tmp / "chain.pem").write_bytes(serving.chain_pem)
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._tls.load_cert_chain(tmp / "chain.pem", tmp / "key.pem")
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = int(self._listener.getsockname()[1])
        self.kubeconfig = tmp / "kubeconfig"
        self.kubeconfig.write_text(yaml.safe_dump(self._config(authority.cert_pem)))
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self.accepted = 0
        self.closed_by_client = 0
        self.held = False  # a discovery answer is being held
        self._version_waiting = 0
        self._version_together = 1
        self._version_go = threading.Condition(self._lock)
        self._hold_discovery = False
        self._a_connection_closed = threading.Event()
        self._thread(self._accept)

    @property
    def open(self) -> int:
        """Connections the client made and has not closed yet."""
        with self._lock:
            return self.accepted - self.closed_by_client

    def version_together(self, n: int) -> None:
        self._version_together = n

    def hold_discovery(self) -> None:
        self._hold_discovery = True

    def _config(self, ca_pem: bytes) -> dict[str, object]:
        import base64

        return {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "fake",
            "clusters": [
                {
                    "name": "fake",
                    "cluster": {
                        "server": f"https://127.0.0.1:{self.port}",
                        "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                    },
                }
            ],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        }

    def _thread(self, target: object, *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(t)
        t.start()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                raw, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                self._socks.add(raw)
            self._thread(self._serve, raw)

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(None)
        sock: socket.socket = raw
        try:
            sock = self._tls.wrap_socket(raw, server_side=True)
            with self._lock:
                self._socks.discard(raw)
                self._socks.add(sock)
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    data = sock.recv(65536)
                    if not data:
                        return  # the client closed it
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                path = head.split(b" ")[1].decode()
                self._answer(sock, path)
        except (OSError, ssl.SSLError):
            return  # reset by the client, or stopped
        finally:
            with self._lock:
                self._socks.discard(sock)
                if not self._stopping.is_set():
                    self.closed_by_client += 1
            self._a_connection_closed.set()
            sock.close()

    def _answer(self, sock: socket.socket, path: str) -> None:
        if path.startswith("/version"):
            with self._version_go:
                self._version_waiting += 1
                self._version_go.notify_all()
                self._version_go.wait_for(
                    lambda: (
                        self._version_waiting >= self._version_together or self._stopping.is_set()
                    ),
                    timeout=10,
                )
            self._send(sock, {"gitVersion": "v1.0.0-fake"})
        elif path.startswith(DISCOVERY):
            if self._hold_discovery:
                self._hold_discovery = False
                self.held = True
                self._a_connection_closed.wait(timeout=10)
                self.held = False
            self._send(sock, {"kind": "APIResourceList", "resources": []})
        elif "watch=true" in path:
            sock.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
        else:
            self._send(sock, {"kind": "ConfigMapList", "items": [], "metadata": {}})

    @staticmethod
    def _send(sock: socket.socket, doc: object) -> None:
        body = json.dumps(doc).encode()
        sock.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )

    def stop(self) -> None:
        self._stopping.set()
        self._a_connection_closed.set()
        with self._version_go:
            self._version_go.notify_all()
        with self._lock:
            socks = list(self._socks)
        for s in socks:  # wakes the threads reading them; each closes its own
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(timeout=10)
        self._listener.close()


@pytest.fixture
def server(tmp_path: pathlib.Path) -> Iterator[FakeApiServer]:
    fake = FakeApiServer(tmp_path)
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def client(server: FakeApiServer) -> Iterator[kube.Kube]:
    c = kube.connect(str(server.kubeconfig))
    try:
        yield c
    finally:
        c.close()


async def test_a_lookup_running_when_the_client_is_closed_leaves_no_connection_open(
    server: FakeApiServer, client: kube.Kube
) -> None:
    """The lookup of a kind the server does not serve asks twice (once more in case a CRD was
    just made). It is running on a thread when the client is closed: its first answer comes
    only then. Its second request must not open a connection in a new pool nobody closes."""
    server.version_together(2)  # two connections in the client's pool, both idle after this
    assert await asyncio.gather(client.server_version(), client.server_version())
    assert server.accepted == 2
    server.hold_discovery()
    lookup = asyncio.create_task(client.resource_type(api_version="example.com/v1", kind="Widget"))
    await wait.until("the lookup's first request to reach the server", lambda: server.held)

    client.close()  # closes the idle connection: the server answers the lookup now

    with pytest.raises(errors.Unreachable) as e:
        await lookup
    assert str(e.value) == (
        f"cannot reach the Kubernetes API server at https://127.0.0.1:{server.port}: "
        "this client was closed"
    )
    assert server.accepted == 2, "the closed client opened a connection"
    await wait.until("the client to close every connection", lambda: server.open == 0, within=5)


async def test_closing_the_client_ends_its_watches_and_their_connections(
    server: FakeApiServer, client: kube.Kube
) -> None:
    watching = asyncio.create_task(
        client.watch(CM, "default", resource_version="5", on_event=lambda _: None)
    )
    await wait.until("the watch to be connected", lambda: server.open == 1)
    await asyncio.to_thread(client.close)
    with contextlib.suppress(errors.Unreachable):  # or it ends quietly, if closed as it began
        await asyncio.wait_for(watching, timeout=10)
    await wait.until("the watch's connection to be closed", lambda: server.open == 0, within=5)


async def test_a_closed_client_opens_no_connection(
    server: FakeApiServer, client: kube.Kube
) -> None:
    assert await client.server_version() == "v1.0.0-fake"
    client.close()
    with pytest.raises(errors.Unreachable, match="this client was closed"):
        await client.watch(CM, "default", resource_version="5", on_event=lambda _: None)
    with pytest.raises(errors.Unreachable, match="this client was closed"):
        await client.server_version()
    assert server.accepted == 1
    await wait.until("its connection to be closed", lambda: server.open == 0, within=5)


async def test_a_server_resetting_connections_before_the_tls_handshake_leaves_no_socket(
    tmp_path: pathlib.Path,
) -> None:
    """A stopped or killed API server resets connections it has just accepted. CPython's ssl
    then raises ECONNRESET without closing the TLS socket it made (seen 18 times in 40
    requests before the fix); every one must be closed, not left to the garbage collector."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    port = int(listener.getsockname()[1])
    stop = threading.Event()

    def reset_every_connection() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            raw.close()

    fake = FakeApiServer(tmp_path)  # only for its kubeconfig and CA; pointed at the listener
    fake.stop()
    kubeconfig = tmp_path / "reset-kubeconfig"
    kubeconfig.write_text(
        fake.kubeconfig.read_text().replace(f"127.0.0.1:{fake.port}", f"127.0.0.1:{port}")
    )
    resetter = threading.Thread(target=reset_every_connection, daemon=True)
    resetter.start()
    client = kube.connect(str(kubeconfig))
    try:
        for _ in range(40):
            with pytest.raises(errors.Unreachable):
                await client.server_version()
    finally:
        client.close()
        stop.set()
        resetter.join(timeout=10)
        listener.close()
    gc.collect()  # an unclosed socket now fails this test (warnings are errors)
