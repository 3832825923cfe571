"""The ids that cross the agent's modules, as distinct types so that mypy catches an app name
passed where a cluster name or a revision belongs. They are plain `str` at runtime: wrap a
value once where it enters the agent (a protobuf field, a CLI flag, a file), never re-check it.
"""

from __future__ import annotations

from typing import NewType

ClusterName = NewType("ClusterName", str)  # the cluster's name in the fleet (its certificate CN)
AppName = NewType("AppName", str)  # an app's name, unique within a cluster
Revision = NewType("Revision", str)  # the Git commit an app's bundle was rendered from
Digest = NewType("Digest", str)  # sha256 of a bundle's content (`fleetops.proto.bundles.digest`)
