"""Bundle identity shared by hub and agent: the digest of a Bundle is the sha256 of its
deterministic serialization, so a bundle rendered twice from the same input has one digest."""

from __future__ import annotations

import hashlib

from proto.fleetops.v1 import types_pb2


def digest(bundle: types_pb2.Bundle) -> str:
    return hashlib.sha256(bundle.SerializeToString(deterministic=True)).hexdigest()
