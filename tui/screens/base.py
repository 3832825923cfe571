"""What every fleet screen shares: the host that holds the fleet model (seen through the
`FleetHost` protocol, never through `tui.app`, so screens sit below the app and import nothing
above them), and repainting when the model changes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, cast

from textual.screen import Screen
from textual.worker import Worker

from fleetops.proto.v1 import types_pb2
from fleetops.tui import messages, model


class HistorySource(Protocol):
    """Where the history screen reads an app's events (the hub client in the app)."""

    async def history(
        self, app: str = "", cluster: str = "", limit: int = 200
    ) -> list[types_pb2.Event]: ...


class FleetHost(Protocol):
    """What screens need from the app that shows them: the live fleet model, the clock that
    dates it, the hub's history, and the operator's actions. `tui.app.FleetApp` is one; a test
    may hand in any other."""

    @property
    def fleet(self) -> model.Fleet: ...

    @property
    def clock(self) -> Callable[[], float]: ...

    @property
    def client(self) -> HistorySource: ...

    def act(self, action: str, app: str, cluster: str = "", revision: str = "") -> Worker[None]: ...


class FleetScreen(Screen[None]):
    @property
    def fleet_app(self) -> FleetHost:
        # Textual types `self.app` as a bare App; the app these screens run in is a FleetHost.
        return cast(FleetHost, self.app)

    def on_fleet_changed(self, _msg: messages.FleetChanged) -> None:
        self.refresh_view()

    def refresh_view(self) -> None:
        """Repaint from the fleet model; screens that show fleet data override it."""
