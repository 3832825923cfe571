"""Messages between the TUI's workers and its screens."""

from __future__ import annotations

from textual.message import Message


class FleetChanged(Message):
    """The fleet model changed. Bursts of changes coalesce into one repaint."""

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, FleetChanged)


class ConnectionChanged(Message):
    def __init__(self, live: bool, detail: str) -> None:
        super().__init__()
        self.live = live
        self.detail = detail
