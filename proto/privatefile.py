"""Writing a file only its owner reads, atomically: a reader sees the old file or the new one,
never half of either. Shared by hub (keys, tokens) and agent (state), which may import only
`proto`; it must never import either."""

from __future__ import annotations

import os
import pathlib
import tempfile


def write(path: pathlib.Path, data: bytes) -> None:
    """`data` into `path` with mode 0600 (its directory 0700 when made here)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
