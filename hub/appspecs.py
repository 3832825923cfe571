"""Apps as they are deployed: an app hub.yaml gives no targets takes them from the fleet.yaml
in its path at the repo's head revision (read through hub.fleetyaml).

A fleet.yaml that does not read is that app's error, shown on the app; the app keeps what was
deployed (its last good reading, or no targets at all). Reads Git, never plans.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping

from fleetops.hub import config, errors, fleetstate, fleetyaml, repo, status

log = logging.getLogger("fleetops.hub")


class AppSpecs:
    def __init__(
        self, *, settings: fleetstate.Settings, repos: Mapping[str, repo.RepoCache]
    ) -> None:
        self._settings = settings
        self._repos = repos
        # app -> (head it was read at, the configured app, the app with fleet.yaml applied)
        self._effective: dict[str, tuple[str, config.App, config.App]] = {}
        self.errors: dict[str, str] = {}  # app -> why its fleet.yaml does not read
        self._lock = asyncio.Lock()

    def effective(self, app: config.App) -> config.App:
        """The app with fleet.yaml applied (when hub.yaml gives it no targets)."""
        if app.targets is not None:
            return app
        got = self._effective.get(app.name)
        return got[2] if got is not None and got[1] == app else app

    def apps(self) -> list[config.App]:
        """Every configured app, as deployed, in hub.yaml's order."""
        return [self.effective(a) for a in self._settings.cfg.apps]

    async def read(self, heads: Mapping[str, str]) -> None:
        """Read the fleet.yaml of every app without targets whose head moved."""
        async with self._lock:
            for app in self._settings.cfg.apps:
                await self._read_one(app, heads.get(app.repo, ""))

    async def _read_one(self, app: config.App, head: str) -> None:
        cache = self._repos.get(app.repo)
        if app.targets is not None or not head or cache is None:
            return
        got = self._effective.get(app.name)
        if got is not None and got[0] == head and got[1] == app:
            return
        try:
            text = await asyncio.to_thread(cache.read, head, path=f"{app.path}/fleet.yaml")
            if text is None:
                self._effective[app.name] = (head, app, app)
                self.errors.pop(app.name, None)
                return
            effective = await asyncio.to_thread(fleetyaml.apply, app, text)
            self._effective[app.name] = (head, app, effective)
            self.errors.pop(app.name, None)
        except Exception as e:  # RenderError, or anything a hostile fleet.yaml provokes
            # keep what was deployed: the last good reading, or nothing at all
            message = (
                str(e) if isinstance(e, errors.RenderError) else status.unexpected("fleet.yaml", e)
            )
            self.errors[app.name] = message
            if got is None:
                self._effective[app.name] = (head, app, dataclasses.replace(app, targets=()))
            log.warning("app %s: %s", app.name, e)
