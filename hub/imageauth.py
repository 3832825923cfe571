"""The credentials one image repository's scans log in with: its `auth.dockerConfigFile`
read into a registryspec.Auth, read again only when the file changed (so the Bearer tokens
of an unchanged one are kept).

The file may be a pipe or sit on a stalled mount (a secret from a hung network or FUSE file
system): every look at it is given READ_SECONDS in a thread, and a look still stuck from an
earlier scan is never started again (each would hold a thread for good). It must never put
the file's content in a message.
"""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Callable
from typing import Any, TypeVar

from fleetops.hub import registryspec

READ_SECONDS = 10.0  # one look at a Docker config file

T = TypeVar("T")


class Login:
    """One repository's Auth, kept across its scans."""

    def __init__(self) -> None:
        self._auth: registryspec.Auth | None = None
        self._key: tuple[str, int, int] = ("", 0, 0)
        self._reading: asyncio.Future[Any] | None = None

    async def auth(self, *, path: str, registry: str) -> registryspec.Auth:
        """The Auth for `registry` from the Docker config at `path` (anonymous when '');
        a RegistryError naming the file and auth.dockerConfigFile when it cannot be read."""
        if not path:
            key: tuple[str, int, int] = ("", 0, 0)
        else:
            try:
                st = await self._read(path, pathlib.Path(path).stat)
            except OSError as e:
                raise registryspec.RegistryError(
                    f"cannot read the Docker config {path}: {e.strerror}; check "
                    "auth.dockerConfigFile"
                ) from None
            key = (path, st.st_mtime_ns, st.st_size)
        if self._auth is None or self._key != key:
            if path:
                self._auth = await self._read(
                    path, lambda: registryspec.Auth.from_docker_config(path, registry=registry)
                )
            else:
                self._auth = registryspec.Auth.anonymous()
            self._key = key
        return self._auth

    async def _read(self, path: str, work: Callable[[], T]) -> T:
        if self._reading is not None and not self._reading.done():
            raise registryspec.RegistryError(
                f"the Docker config {path} is still being read since an earlier scan (a pipe, "
                "or a stalled file system); check auth.dockerConfigFile"
            )
        reading = asyncio.ensure_future(asyncio.to_thread(work))
        reading.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._reading = reading
        try:
            return await asyncio.wait_for(asyncio.shield(reading), READ_SECONDS)
        except TimeoutError:
            raise registryspec.RegistryError(
                f"the Docker config {path} was not read within {READ_SECONDS:g} s (a pipe, or a "
                "stalled file system); check auth.dockerConfigFile"
            ) from None
