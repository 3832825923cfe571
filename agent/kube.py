"""The agent's only door to the kube-apiserver (with kubeconnect and kubecall, the only
modules that import `kubernetes`).

It speaks the REST API directly (server-side apply, get, list, delete) through the client's
configured connection pool, with lazy per-group-version discovery, and returns plain dicts:
the reconciler never sees a client model. Blocking calls run on a dedicated thread pool so
many requests are in flight at once; every method here is async. It counts the requests it
sends by verb, so tests and benchmarks can prove that a no-op resync writes nothing.

Every request has a deadline: a connect timeout (TCP and TLS) and a read timeout, and at most
a couple of immediate reconnects, never a retried read; so an API server that is down or that
accepts and never answers costs one timeout, not a hung thread. Whatever the transport raises
(urllib3's MaxRetryError, a reset, a TLS failure) comes out as `errors.Unreachable` naming the
server, never as a foreign exception. A watch (`watch`) is the one long request: it asks the
server to end it after `timeoutSeconds`, gives it up when it stays silent past the server's
bookmarks (`WATCH_SILENCE`), streams on a thread of its own (never the request pool), and is
closed when its caller is cancelled.

Every connection is closed by us, never left to the garbage collector (an unclosed TLS socket
fails the tests): a response is read to its end or closed, and `close` refuses new requests,
ends the watches, waits (briefly) for the requests still running on threads (a cancelled
caller does not stop its thread) and closes the connection pools; a request that outlives that
wait closes what it pooled itself when it ends, so no pool made after `close` keeps a socket.
(The connections and pools are made in kubeconnect, errors mapped in kubecall, the value types
are in kubetypes; all that callers use is imported from here.)

It must never log request or response bodies: they may be Secrets.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from urllib3 import exceptions as transport

from fleetops.agent import errors, kubecall, kubeconnect, kubewatch, kubewire
from fleetops.agent.kubetypes import CONNECT_TIMEOUT, READ_TIMEOUT, ResourceType, Timeouts

__all__ = [
    "CONNECT_TIMEOUT",
    "FIELD_MANAGER",
    "READ_TIMEOUT",
    "WATCH_SECONDS",
    "Kube",
    "ResourceType",
    "Timeouts",
    "connect",
]

FIELD_MANAGER = "fleetops"
T = TypeVar("T")
WATCH_SECONDS = 300  # the server ends a watch after this; the caller resumes it
# The server sends a bookmark on every watch about once a minute: a watch silent for longer
# sits on a dead connection (a partition without a reset), and is given up.
WATCH_SILENCE = 90.0
CLOSE_WAIT = 2.0  # how long `close` waits for the requests and watches running on threads
EventSink = Callable[[dict[str, Any]], None]
Objects = list[dict[str, Any]]


class Kube:
    """One cluster. Create with `connect`; close with `close`."""

    def __init__(self, api: Any, *, concurrency: int, timeouts: Timeouts | None = None) -> None:
        self._api = api
        self.timeouts = timeouts or Timeouts()
        self.host = str(getattr(getattr(api, "configuration", None), "host", "") or "")
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=concurrency, thread_name_prefix="kube"
        )
        self._lock = threading.Lock()
        self._discovery: dict[str, dict[str, ResourceType]] = {}  # group/version -> kind -> type
        self._preferred: dict[str, str] = {}
        self.requests: collections.Counter[str] = collections.Counter()
        self._watching: set[kubewatch.Opened] = (
            set()
        )  # the watches streaming now (closed by close())
        self._closed = False
        self._busy = 0  # requests and watches running on threads now
        self._idle = threading.Condition(self._lock)  # notified when the last of them ends

    # ------------------------------------------------------------ plumbing

    async def _run(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(self._pool, functools.partial(fn, *args, **kw))
        except RuntimeError:  # its thread pool is shut down: the client was closed
            raise self._unreachable("this client was closed") from None
        return await future

    @contextlib.contextmanager
    def _request(self) -> Iterator[None]:
        """Around every request a thread sends: none starts once the client is closed, and one
        that ends after `close` closes whatever the connection pools hold by then (its own
        connection included), so a pool made meanwhile is not left for the garbage collector."""
        with self._lock:
            if self._closed:
                raise self._unreachable("this client was closed")
            self._busy += 1
        try:
            yield
        finally:
            with self._lock:
                self._busy -= 1
                closed = self._closed
                if not self._busy:
                    self._idle.notify_all()
            if closed:
                kubeconnect.close_pools(self._api)

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        count_as: str = "",
    ) -> Any:
        with self._lock:
            self.requests[count_as or method] += 1
        method, url, headers, body, _ = self._api.param_serialize(
            method=method,
            resource_path=path,
            query_params=query or [],
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
        )
        timeout = (self.timeouts.connect, self.timeouts.read)
        mapped = kubecall.mapped_errors(
            host=self.host, timeouts=self.timeouts, method=method, path=path
        )
        with self._request(), mapped:
            resp = self._api.call_api(
                method, url, header_params=headers, body=body, _request_timeout=timeout
            )
            data = kubecall.read(resp)
        if not 200 <= resp.status < 300:
            raise kubewire.error(
                resp.status, body=data, http_reason=resp.reason, method=method, path=path
            )
        return json.loads(data) if data else {}

    def _unreachable(self, cause: str) -> errors.Unreachable:
        return kubecall.unreachable(self.host, cause)

    def writes(self) -> int:
        """Requests that could change the cluster (dry-runs excluded)."""
        return sum(
            n for verb, n in self.requests.items() if verb in ("PATCH", "POST", "PUT", "DELETE")
        )

    # ------------------------------------------------------------ discovery

    def _group_version(self, group_version: str) -> dict[str, ResourceType]:
        cached = self._discovery.get(group_version)
        if cached is not None:
            return cached
        group, _, version = group_version.rpartition("/")
        path = f"/apis/{group_version}" if group else f"/api/{version}"
        try:
            doc = self._call("GET", path)
        except errors.NotFound:
            doc = {"resources": []}
        kinds = {}
        for r in doc.get("resources", []):
            if "/" in r["name"]:  # subresources such as deployments/scale
                continue
            kinds[r["kind"]] = ResourceType(
                group=group,
                version=version,
                kind=r["kind"],
                plural=r["name"],
                namespaced=r["namespaced"],
            )
        self._discovery[group_version] = kinds
        return kinds

    def _resource_type(self, *, api_version: str, kind: str) -> ResourceType:
        found = self._group_version(api_version).get(kind)
        if found is None:  # maybe a CRD was just established: ask once more
            self._discovery.pop(api_version, None)
            found = self._group_version(api_version).get(kind)
        if found is None:
            raise errors.UnknownKind(api_version=api_version, kind=kind)
        return found

    async def resource_type(self, *, api_version: str, kind: str) -> ResourceType:
        return await self._run(self._resource_type, api_version=api_version, kind=kind)

    def _preferred_version(self, group: str) -> str:
        if not group:
            return "v1"
        if group not in self._preferred:
            try:
                doc = self._call("GET", f"/apis/{group}")
                self._preferred[group] = doc["preferredVersion"]["version"]
            except errors.NotFound:
                raise errors.UnknownKind(api_version=group, kind="(any)") from None
        return self._preferred[group]

    async def resource_type_for_group(self, *, group: str, kind: str) -> ResourceType:
        """The preferred version's type for (group, kind): what prune and status use."""
        version = await self._run(self._preferred_version, group)
        return await self.resource_type(
            api_version=f"{group}/{version}" if group else version, kind=kind
        )

    def forget_discovery(self) -> None:
        self._discovery.clear()
        self._preferred.clear()

    # ------------------------------------------------------------ verbs

    async def get(self, rt: ResourceType, *, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._run(self._call, "GET", rt.path(namespace=namespace, name=name))
        except errors.NotFound:
            return None

    async def list(
        self, rt: ResourceType, namespace: str = "", *, label_selector: str = ""
    ) -> list[dict[str, Any]]:
        query = [("labelSelector", label_selector)] if label_selector else []
        doc = await self._run(
            self._call, "GET", rt.path(namespace=namespace), query=query, count_as="LIST"
        )
        items: list[dict[str, Any]] = doc.get("items", [])
        for item in items:  # list items carry no apiVersion/kind
            item.setdefault("apiVersion", rt.api_version)
            item.setdefault("kind", rt.kind)
        return items

    async def list_at(
        self, rt: ResourceType, namespace: str = "", *, field_selector: str = ""
    ) -> tuple[Objects, str]:
        """`list`, and the list's resourceVersion: where a watch of it starts."""
        query = [("fieldSelector", field_selector)] if field_selector else []
        doc = await self._run(
            self._call, "GET", rt.path(namespace=namespace), query=query, count_as="LIST"
        )
        items: Objects = doc.get("items", [])
        for item in items:
            item.setdefault("apiVersion", rt.api_version)
            item.setdefault("kind", rt.kind)
        return items, str((doc.get("metadata") or {}).get("resourceVersion") or "")

    async def watch(
        self,
        rt: ResourceType,
        namespace: str = "",
        *,
        resource_version: str,
        on_event: EventSink,
        field_selector: str = "",
        timeout_seconds: int = WATCH_SECONDS,
    ) -> None:
        """Stream the changes of `rt` in `namespace` after `resource_version` (bookmarks
        included) to `on_event` on the event loop, until the server ends the watch (normal
        return) or it fails: `errors.KubeError` with status 410 when the version is too old
        (list again), `errors.Unreachable` when the connection broke. Cancelling closes it."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        opened = kubewatch.Opened()
        with self._lock:
            self._watching.add(opened)

        def settle(error: BaseException | None) -> None:
            if done.done():
                return
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

        def post(fn: Callable[..., None], arg: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
                loop.call_soon_threadsafe(fn, arg)

        def stream() -> None:
            try:
                self._stream(
                    rt,
                    namespace,
                    resource_version=resource_version,
                    field_selector=field_selector,
                    timeout_seconds=timeout_seconds,
                    opened=opened,
                    deliver=lambda event: post(on_event, event),
                )
            except BaseException as e:  # handed to the awaiting task, never lost in the thread
                post(settle, e)
            else:
                post(settle, None)

        opened.thread = threading.Thread(target=stream, name=f"watch {rt.plural}", daemon=True)
        opened.thread.start()
        try:
            await done
        finally:
            opened.cancel()
            with self._lock:
                self._watching.discard(opened)

    def _stream(
        self,
        rt: ResourceType,
        namespace: str,
        *,
        resource_version: str,
        field_selector: str,
        timeout_seconds: int,
        opened: kubewatch.Opened,
        deliver: EventSink,
    ) -> None:
        with self._lock:
            self.requests["WATCH"] += 1
        query = [
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(timeout_seconds)),
        ]
        if resource_version:
            query.append(("resourceVersion", resource_version))
        if field_selector:
            query.append(("fieldSelector", field_selector))
        path = rt.path(namespace=namespace)
        method, url, headers, body, _ = self._api.param_serialize(
            method="GET",
            resource_path=path,
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        timeout = (self.timeouts.connect, WATCH_SILENCE)
        mapped = kubecall.mapped_errors(
            host=self.host,
            timeouts=self.timeouts,
            method="GET",
            path=path,
            transport_errors=(transport.HTTPError, OSError, ValueError),
        )
        with self._request(), mapped:
            resp = self._api.call_api(method, url, header_params=headers, _request_timeout=timeout)
            raw = resp.response
            if not opened.keep(raw):
                return  # cancelled while the server answered: closed, nobody listens
            try:
                if not 200 <= resp.status < 300:
                    data = kubecall.read(resp)
                    raise kubewire.error(
                        resp.status, body=data, http_reason=resp.reason, method="GET", path=path
                    )
                for event in kubewire.events(raw.stream(2**16), path=path):
                    deliver(event)
            finally:  # a broken or ended stream gives its socket back, never leaks it
                raw.close()

    async def apply(
        self, rt: ResourceType, obj: Mapping[str, Any], *, force: bool, dry_run: bool = False
    ) -> dict[str, Any]:
        meta = obj["metadata"]
        query = [("fieldManager", FIELD_MANAGER), ("fieldValidation", "Strict")]
        if force:
            query.append(("force", "true"))
        if dry_run:
            query.append(("dryRun", "All"))
        return await self._run(
            self._call,
            "PATCH",
            rt.path(namespace=str(meta.get("namespace") or ""), name=str(meta["name"])),
            query=query,
            body=json.dumps(obj),
            content_type="application/apply-patch+yaml",
            count_as="PATCH(dry-run)" if dry_run else "PATCH",
        )

    async def create(self, rt: ResourceType, obj: Mapping[str, Any]) -> dict[str, Any]:
        ns = str(obj["metadata"].get("namespace") or "")
        return await self._run(self._call, "POST", rt.path(namespace=ns), body=dict(obj))

    async def replace(self, rt: ResourceType, obj: Mapping[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        path = rt.path(namespace=str(meta.get("namespace") or ""), name=str(meta["name"]))
        return await self._run(self._call, "PUT", path, body=dict(obj))

    async def delete(self, rt: ResourceType, *, namespace: str, name: str) -> bool:
        """Delete in the background (dependents go too); False when it was already gone."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        try:
            await self._run(
                self._call, "DELETE", rt.path(namespace=namespace, name=name), body=body
            )
        except errors.NotFound:
            return False
        return True

    async def server_version(self) -> str:
        doc = await self._run(self._call, "GET", "/version")
        return str(doc.get("gitVersion", "unknown"))

    def close(self) -> None:
        """Refuse new requests, end the watches, close the idle connections, wait up to
        `CLOSE_WAIT` for the requests still running on threads, and close what they gave back.
        Safe to call more than once."""
        with self._lock:
            self._closed = True
            watching, self._watching = list(self._watching), set()
        for opened in watching:  # no watch thread keeps a socket past the client
            opened.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)  # queued requests never start
        kubeconnect.close_pools(
            self._api
        )  # the idle connections now, the others as their requests end
        deadline = time.monotonic() + CLOSE_WAIT
        with self._idle:  # each running request ends, closing its connection (the pool is)
            self._idle.wait_for(lambda: not self._busy, timeout=CLOSE_WAIT)
        for opened in watching:  # each closes its socket as its read ends
            if opened.thread is not None:
                opened.thread.join(timeout=max(0.0, deadline - time.monotonic()))
        kubeconnect.close_pools(
            self._api
        )  # and any a request that began as we closed has made since


def connect(
    kubeconfig: str | None = None,
    *,
    context: str | None = None,
    concurrency: int = 16,
    timeouts: Timeouts | None = None,
) -> Kube:
    """A client for the cluster in `kubeconfig`, or the in-cluster service account when None."""
    api = kubeconnect.api_client(kubeconfig, context=context, concurrency=concurrency)
    return Kube(api, concurrency=concurrency, timeouts=timeouts)
