"""The Textual app: holds the fleet model, keeps it live from the hub's Watch stream in a
worker, and runs the operator's actions. `make_app(client=...)` lets tests hand in a client.

It is the top of the TUI: screens see it only as `screens.base.FleetHost` and never import it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc
from textual import work
from textual.app import App
from textual.notifications import SeverityLevel

from fleetops.tui import client as hubclient
from fleetops.tui import messages, model, text
from fleetops.tui.screens import base, overview


class FleetApp(App[None]):
    CSS_PATH = "fleet.tcss"
    TITLE = "fleetops"

    def __init__(self, client: hubclient.HubClient, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.client = client
        self.clock = clock
        self.fleet = model.Fleet()
        self.live = False

    def get_default_screen(self) -> overview.Overview:
        # The overview is the base screen itself: a screen pushed over Textual's default one
        # made every repaint of the (empty) default screen repaint the whole overview.
        return overview.Overview()

    def on_mount(self) -> None:
        self.watch_hub()

    async def on_unmount(self) -> None:
        await self.client.close()

    def _tell(self, msg: messages.FleetChanged | messages.ConnectionChanged) -> None:
        for screen in self.screen_stack:
            screen.post_message(msg)

    @work(exclusive=True, group="watch")
    async def watch_hub(self) -> None:
        """Stream changes from the hub; on a lost connection say so, keep the last data marked
        stale, and retry with backoff."""
        backoff = 1.0
        lost_at = 0.0
        while True:
            try:
                async for change in self.client.watch():
                    if not self.live:
                        self.live = True
                        backoff = 1.0
                        self._tell(
                            messages.ConnectionChanged(True, f"live: {self.client.creds.address}")
                        )
                    self.fleet.apply(change)
                    self._tell(messages.FleetChanged())
                reason = "the hub closed the stream"
            except hubclient.HubSilentError as e:
                reason = str(e)
            except grpc.aio.AioRpcError as e:
                reason = f"{e.code().name}: {e.details()}"
                if e.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    self._tell(messages.ConnectionChanged(False, f"refused by the hub: {reason}"))
                    return
            if self.live or not lost_at:
                lost_at = self.clock()
            self.live = False
            stamp = time.strftime("%H:%M:%SZ", time.gmtime(lost_at))
            self._tell(
                messages.ConnectionChanged(
                    False,
                    f"connection lost ({reason}); data is stale since {stamp}; "
                    f"retrying in {backoff:.0f} s",
                )
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    @work(group="actions")
    async def act(self, action: str, app: str, cluster: str = "", revision: str = "") -> None:
        try:
            if action == "rollback":
                message = await self.client.rollback(app, revision, cluster)
            elif action == "sync":
                message = await self.client.sync(app, cluster)
            elif action == "unpin":
                message = await self.client.unpin(app, cluster)
            elif action in ("pause", "resume"):
                message = await self.client.pause(app, paused=action == "pause")
            elif action.startswith("rollout "):  # rollout pause|resume|promote|abort|retry
                message = await self.client.rollout_action(app, action.removeprefix("rollout "))
            else:
                raise ValueError(action)
        except grpc.aio.AioRpcError as e:
            verb = "refused" if e.code() == grpc.StatusCode.PERMISSION_DENIED else "failed"
            self.say(f"{action} {verb}: {e.details()}", severity="error", timeout=8)
            return
        self.say(message)

    def say(
        self, message: str, *, severity: SeverityLevel = "information", timeout: float | None = None
    ) -> None:
        """A notification whose text may come from the hub: shown literally."""
        self.notify(text.visible(message), severity=severity, timeout=timeout, markup=False)


def make_app(*, client: hubclient.HubClient, clock: Callable[[], float] = time.time) -> FleetApp:
    app = FleetApp(client, clock)
    host: base.FleetHost = app  # mypy checks here that the app is the host its screens expect
    del host
    return app
