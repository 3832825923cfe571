"""The agent's /healthz and /readyz, on plain HTTP for the kubelet: /healthz answers while the
agent's loop runs (with how its supervised loops are), /readyz once it is connected to the hub.

It only reads the flags it is given; it never changes what the agent does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fleetops.agent import errors

_REASONS = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}


class Probes:
    def __init__(
        self,
        *,
        listen: str,
        hub: str,
        stop: asyncio.Event,
        connected: asyncio.Event,
        tasks: Callable[[], str],
    ) -> None:
        self.listen = listen  # HOST:PORT
        self.hub = hub
        self.stop = stop
        self.connected = connected
        self.tasks = tasks  # one line per supervised loop
        self._server: asyncio.Server | None = None

    async def bind(self) -> None:
        """Listen now, so a bad address ends the agent at once; `serve` serves it later."""
        self._server = await self._bind()

    async def serve(self) -> None:
        """Serve until cancelled (bound again when the supervisor restarts it)."""
        server, self._server = self._server or await self._bind(), None
        async with server:
            await server.serve_forever()

    def _answer(self, path: bytes) -> tuple[int, str]:
        if path == b"/healthz":
            return (200, "ok\n" + self.tasks()) if not self.stop.is_set() else (503, "stopping")
        if path == b"/readyz":
            if self.connected.is_set():
                return 200, "connected"
            return 503, f"not connected to the hub at {self.hub}"
        return 404, "try /healthz or /readyz"

    async def _bind(self) -> asyncio.Server:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                line = await asyncio.wait_for(reader.readline(), timeout=5)
                path = line.split(b" ")[1] if line.count(b" ") >= 2 else b""
                code, text = self._answer(path)
                body = (text.rstrip("\n") + "\n").encode()
                writer.write(
                    f"HTTP/1.1 {code} {_REASONS[code]}\r\nContent-Type: text/plain\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
            except (TimeoutError, OSError, IndexError):
                pass
            finally:
                writer.close()

        host, _, port = self.listen.rpartition(":")
        if not port.isdigit():
            raise errors.AgentError(f"--health-listen {self.listen!r}: use HOST:PORT")
        try:
            return await asyncio.start_server(answer, host.strip("[]") or None, int(port))
        except OSError as e:
            raise errors.AgentError(f"--health-listen {self.listen}: {e.strerror}") from None
