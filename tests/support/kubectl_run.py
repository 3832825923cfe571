"""kubectl as a person (or another tool) runs it beside fleetops, from async tests: objects it
makes are not fleetops's, which is what the prune and confinement tests need."""

from __future__ import annotations

import asyncio
import subprocess

from tests import localkube


async def kubectl(
    cluster: localkube.LocalCluster, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run kubectl against `cluster`; fail the test, with its stderr, when it fails."""
    done = await asyncio.to_thread(
        subprocess.run,
        [localkube.binary("kubectl"), f"--kubeconfig={cluster.kubeconfig}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
    return done
