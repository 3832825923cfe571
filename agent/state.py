"""The agent's local memory: the last assignment and bundle of every app, on disk.

With the hub gone, an agent (or a restarted agent pod with the same volume) reconciles and
self-heals from here. Files are written atomically and readable by the agent's user only,
because bundles may contain Secrets. It never reaches the network or the cluster.

    <dir>/apps/<app>.json        the Assignment (protobuf JSON)
    <dir>/bundles/<digest>.pb    the Bundle it points at (serialized protobuf)
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

from google.protobuf import json_format

from fleetops.agent import errors
from fleetops.proto import bundles, privatefile
from fleetops.proto.v1 import types_pb2


def default_dir() -> pathlib.Path:
    env = os.environ.get("FLEETOPS_AGENT_STATE")
    if env:
        return pathlib.Path(env)
    base = os.environ.get("XDG_STATE_HOME") or pathlib.Path.home() / ".local" / "state"
    return pathlib.Path(base) / "fleetops-agent"


@dataclasses.dataclass(frozen=True)
class Stored:
    assignment: types_pb2.Assignment
    bundle: types_pb2.Bundle


class LocalState:
    def __init__(self, root: pathlib.Path) -> None:
        self.root = root

    def save(self, assignment: types_pb2.Assignment, bundle: types_pb2.Bundle) -> None:
        digest = bundles.digest(bundle)
        if assignment.bundle_digest and assignment.bundle_digest != digest:
            raise errors.StateError(
                f"app {assignment.app}: bundle digest {digest[:12]} does not match the "
                f"assignment's {assignment.bundle_digest[:12]}; refusing to store it"
            )
        privatefile.write(
            self.root / "bundles" / f"{digest}.pb", bundle.SerializeToString(deterministic=True)
        )
        stored = types_pb2.Assignment()
        stored.CopyFrom(assignment)
        stored.bundle_digest = digest
        text = json_format.MessageToJson(stored, sort_keys=True)
        privatefile.write(self.root / "apps" / f"{assignment.app}.json", text.encode())
        self._collect_garbage()

    def load(self, app: str) -> Stored | None:
        path = self.root / "apps" / f"{app}.json"
        if not path.exists():
            return None
        return self._read(path)

    def load_all(self) -> list[Stored]:
        apps = self.root / "apps"
        if not apps.is_dir():
            return []
        return [self._read(p) for p in sorted(apps.glob("*.json"))]

    def remove(self, app: str) -> None:
        (self.root / "apps" / f"{app}.json").unlink(missing_ok=True)
        self._collect_garbage()

    def _read(self, path: pathlib.Path) -> Stored:
        try:
            assignment = json_format.Parse(path.read_text(), types_pb2.Assignment())
            blob = (self.root / "bundles" / f"{assignment.bundle_digest}.pb").read_bytes()
            bundle = types_pb2.Bundle.FromString(blob)
        except (OSError, json_format.ParseError, ValueError) as e:
            raise errors.StateError(
                f"local state {path} is unreadable ({e}); delete it and the agent will fetch "
                "the assignment again from the hub"
            ) from None
        if bundles.digest(bundle) != assignment.bundle_digest:
            raise errors.StateError(
                f"local bundle for app {assignment.app} is corrupt (digest mismatch); delete "
                f"{path} and the agent will fetch it again"
            )
        return Stored(assignment, bundle)

    def _collect_garbage(self) -> None:
        """Drop bundles no app points at any more."""
        apps = self.root / "apps"
        wanted: set[str] = set()
        if apps.is_dir():
            for p in apps.glob("*.json"):
                try:
                    wanted.add(
                        json_format.Parse(p.read_text(), types_pb2.Assignment()).bundle_digest
                    )
                except (OSError, json_format.ParseError):
                    continue
        blobs = self.root / "bundles"
        if blobs.is_dir():
            for blob in blobs.glob("*.pb"):
                if blob.stem not in wanted:
                    blob.unlink(missing_ok=True)
