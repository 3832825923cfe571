"""A watch's open response, shared between the thread streaming it and the event loop that
cancels it or the client that closes it, so that neither leaves its socket open."""

from __future__ import annotations

import contextlib
import threading
from typing import Any


class Opened:
    """A watch's response, once the server answered, so that cancelling (from the event
    loop) or closing the client ends the read the thread is blocked in. A response that
    arrives after the watch was cancelled is closed at once by the thread, never kept."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._resp: Any = None
        self.cancelled = False
        self.thread: threading.Thread | None = None  # the thread streaming it

    def keep(self, resp: Any) -> bool:
        """Hold `resp`; False (and `resp` closed) when the watch was cancelled meanwhile."""
        with self._lock:
            if not self.cancelled:
                self._resp = resp
                return True
        with contextlib.suppress(Exception):
            resp.close()
        return False

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            resp, self._resp = self._resp, None
        if resp is not None:  # ends the read; the thread's `finally` closes the socket
            with contextlib.suppress(Exception):
                resp.shutdown() if hasattr(resp, "shutdown") else resp.close()
