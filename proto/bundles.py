"""Bundle identity shared by hub and agent.

The digest of a Bundle is the sha256 of its deterministic serialization with the revision
left out: a commit that does not change an app's rendered manifests keeps its digest, so
clusters are not asked to re-apply identical content, and identical clusters share one bundle.
"""

from __future__ import annotations

import hashlib

from fleetops.proto.v1 import types_pb2


def digest(bundle: types_pb2.Bundle) -> str:
    content = types_pb2.Bundle()
    content.CopyFrom(bundle)
    content.revision = ""
    return hashlib.sha256(content.SerializeToString(deterministic=True)).hexdigest()
