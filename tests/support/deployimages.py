"""What image one Deployment runs on each cluster, over time, read from the kube API as a user
reads it (`kubectl get deploy web -o jsonpath='{..image}'`): a thread polls the Deployment on
every cluster every `every` seconds and keeps, per cluster, each image it showed and when it
was first seen, both in the spec (the agent applied it) and rolled out (the Deployment's status
says every replica is updated and available). For ordering checks ("c1 ran 1.10.0 before c2
did, and c2 only after c1 baked") and the image automation benchmark.

Each sighting is bounded on both sides: `after` is the last poll of that cluster that did not
show it yet, `at` the first that did, so "c2 changed after X" can be asserted with `after` and
"c1 changed before c2" with c1's `at` against c2's `after`. Read-only: it never writes to a
cluster."""

from __future__ import annotations

import dataclasses
import pathlib
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from kubernetes import client as kclient  # type: ignore[import-untyped]
from kubernetes import config as kconfig
from kubernetes.client import exceptions as kexceptions  # type: ignore[import-untyped]


@dataclasses.dataclass(frozen=True)
class Seen:
    """An image the Deployment showed: first seen at `at` (wall clock), not yet at `after`."""

    image: str
    after: float
    at: float


@dataclasses.dataclass
class _Track:
    api: Any  # kubernetes ApiClient
    spec: list[Seen] = dataclasses.field(default_factory=list)
    ready: list[Seen] = dataclasses.field(default_factory=list)
    last_poll: float = 0.0
    error: str = ""


class DeploymentImages:
    """Poll Deployment `name` in `namespace` on each cluster (name -> kubeconfig); use as a
    context manager (the thread and the clients end with it)."""

    def __init__(
        self,
        clusters: Mapping[str, pathlib.Path],
        *,
        namespace: str,
        name: str,
        every: float = 0.1,
    ) -> None:
        self.namespace, self.name, self.every = namespace, name, every
        self._tracks = {
            c: _Track(kconfig.new_client_from_config(config_file=str(k)))
            for c, k in clusters.items()
        }
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="deployment-images", daemon=True)

    def __enter__(self) -> DeploymentImages:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for t in self._tracks.values():
            t.api.close()

    # ------------------------------------------------------------ reading

    def image(self, cluster: str) -> str:
        """The image the Deployment's spec shows now ('' when there is no Deployment)."""
        with self._lock:
            spec = self._tracks[cluster].spec
            return spec[-1].image if spec else ""

    def running(self, cluster: str) -> str:
        """The image the Deployment last had rolled out ('' when it never had one)."""
        with self._lock:
            ready = self._tracks[cluster].ready
            return ready[-1].image if ready else ""

    def first(self, cluster: str, image: str, *, ready: bool = False) -> Seen | None:
        """The first sighting of `image` on `cluster` (in the spec, or `ready`: rolled out)."""
        with self._lock:
            t = self._tracks[cluster]
            return next((s for s in (t.ready if ready else t.spec) if s.image == image), None)

    def sightings(self, cluster: str) -> list[Seen]:
        """Every image the spec showed on `cluster`, in order (a change back is a new one)."""
        with self._lock:
            return list(self._tracks[cluster].spec)

    def describe(self) -> str:
        """Per cluster: the images seen, for a failed wait's message."""
        with self._lock:
            return "\n".join(
                f"{c}: spec {[s.image.rsplit(':', 1)[-1] for s in t.spec]} "
                f"ready {[s.image.rsplit(':', 1)[-1] for s in t.ready]}"
                + (f" (last error: {t.error})" if t.error else "")
                for c, t in self._tracks.items()
            )

    # ------------------------------------------------------------ polling

    def _run(self) -> None:
        while not self._stop.is_set():
            for cluster, t in self._tracks.items():
                self._poll(cluster, t)
            self._stop.wait(self.every)  # the polling period, not a wait for a state

    def _poll(self, cluster: str, t: _Track) -> None:
        apps = kclient.AppsV1Api(t.api)
        try:
            d = apps.read_namespaced_deployment(self.name, self.namespace, _request_timeout=5)
        except kexceptions.ApiException as e:
            if e.status != 404:
                t.error = f"{e.status} {e.reason}"
                return
            d = None
        except Exception as e:  # noqa: BLE001 (a cluster's hiccup is shown, never fatal)
            t.error = f"{type(e).__name__}: {e}"
            return
        now = time.time()
        image, ready = "", ""
        if d is not None:
            containers = d.spec.template.spec.containers or []
            image = containers[0].image if containers else ""
            st = d.status
            want = d.spec.replicas if d.spec.replicas is not None else 1
            done = (
                (st.observed_generation or 0) >= (d.metadata.generation or 0)
                and (st.updated_replicas or 0) == want
                and (st.available_replicas or 0) == want
                and (st.replicas or 0) == want
            )
            ready = image if done else ""
        with self._lock:
            if (t.spec[-1].image if t.spec else "") != image:  # '' again: deleted
                t.spec.append(Seen(image, after=t.last_poll, at=now))
            if ready and (not t.ready or t.ready[-1].image != ready):
                t.ready.append(Seen(ready, after=t.last_poll, at=now))
            t.last_poll, t.error = now, ""
