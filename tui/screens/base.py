"""What every fleet screen shares: the app that holds the fleet model, and repainting when
it changes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.screen import Screen

from fleetops.tui import messages

if TYPE_CHECKING:
    from fleetops.tui.app import FleetApp


class FleetScreen(Screen[None]):
    @property
    def fleet_app(self) -> FleetApp:
        return self.app  # type: ignore[return-value]

    def on_fleet_changed(self, _msg: messages.FleetChanged) -> None:
        self.refresh_view()

    def refresh_view(self) -> None:
        """Repaint from the fleet model; screens that show fleet data override it."""
