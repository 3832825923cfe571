"""Which tag each image policy proposes now: hub.imagepolicy's choice over its repository's
newest scan, with the rejected tags left out, and the status that says why there is none.
Computed again only when the tags, the policy or the rejected tags changed (the loop asks
every second); over INLINE_TAGS tags in a thread, as 100,000 take seconds of Python.

hub.yaml's patterns (`filterTags.pattern`, `exclude`) meet the registry's tags here, and
Python's `re` has no timeout and holds the GIL: one pattern with nested repeats (`(a+)+`) and
one tag made for it would stop the whole hub, for years at 128 characters. So every match of
a pattern runs in a child process (`in_child`) killed after REGEX_SECONDS, and the policy or
repository says which pattern to rewrite. It must never match a hub.yaml pattern in the hub's
own process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from fleetops.hub import imagepolicy, imagespec, imagestatus, registryspec

log = logging.getLogger(__name__)

INLINE_TAGS = 2000  # chosen in the loop itself (~40 ms of semver); more in a thread
REGEX_SECONDS = 10.0  # one policy's pattern (or a repository's excludes) over one scan's tags

_Key = tuple[tuple[str, ...], imagepolicy.ImagePolicy, frozenset[str]]
_Got = tuple[imagepolicy.Choice, str]  # the choice, and why there is none when a pattern hung

_CHILD = (
    "import importlib, pickle, sys\n"
    "module, name = sys.argv[1].rsplit(':', 1)\n"
    "args = pickle.load(sys.stdin.buffer)\n"
    "pickle.dump(getattr(importlib.import_module(module), name)(*args), sys.stdout.buffer)\n"
)


class TooSlow(Exception):
    """A hub.yaml pattern ran past REGEX_SECONDS over a scan's tags (the child was killed)."""


async def in_child(function: str, *args: Any) -> Any:
    """`function` ('module:name', a module-level function of this project) of `args` (our
    own values, pickled), computed in a child Python process killed after REGEX_SECONDS."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CHILD,
        function,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(child.communicate(pickle.dumps(args)), REGEX_SECONDS)
    except TimeoutError:
        raise TooSlow(function) from None
    finally:
        if child.returncode is None:  # timed out, or the hub is stopping
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            await child.wait()
    if child.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
        raise RuntimeError(f"{function} failed in its child process: {tail[0][:300]}")
    return pickle.loads(out)


async def without_excluded(
    spec: imagespec.ImageRepository, tags: tuple[str, ...]
) -> tuple[str, ...]:
    """The tags no `exclude` pattern of `spec` matches, matched in a child process; a
    RegistryError (that scan's error) when they run too long."""
    if not spec.exclude or not tags:
        return tags
    try:
        got: tuple[str, ...] = await in_child(f"{__name__}:kept", tags, spec.exclude)
    except TooSlow:
        shown = ", ".join(repr(x.pattern[:100]) for x in spec.exclude)
        raise registryspec.RegistryError(
            f"its exclude patterns ({shown}) ran over {REGEX_SECONDS:g} s on the {len(tags)} "
            "tags and were stopped: one backtracks catastrophically on some tag; rewrite it "
            "without nested repeats such as (a+)+ or (\\w+)*"
        ) from None
    return got


def kept(tags: Iterable[str], exclude: Iterable[re.Pattern[str]]) -> tuple[str, ...]:
    """The tags no `exclude` pattern matches (run by `in_child`)."""
    patterns = list(exclude)
    return tuple(t for t in tags if not any(x.search(t) for x in patterns))


def chosen(
    tags: tuple[str, ...], policy: imagepolicy.ImagePolicy, rejected: frozenset[str]
) -> imagepolicy.Choice:
    """`imagepolicy.choose` with positional arguments (run by `in_child`)."""
    return imagepolicy.choose(tags, policy, rejected=rejected)


class Chooser:
    def __init__(self) -> None:
        self.policies: dict[str, imagestatus.PolicyStatus] = {}
        self._chosen: dict[str, tuple[_Key, _Got]] = {}

    def forget(self, names: set[str]) -> None:
        """Only policies in `names` stay (the others left hub.yaml)."""
        for gone in set(self.policies) - names:
            del self.policies[gone]
        for gone in set(self._chosen) - names:
            del self._chosen[gone]

    async def choose(
        self,
        cfg: imagespec.Images,
        *,
        tags: Mapping[str, tuple[str, ...]],
        scanned: Mapping[str, imagestatus.RepositoryStatus],
        rejected: Mapping[str, set[str]],
    ) -> dict[str, str]:
        """policy -> `image:tag` for every policy with a tag to propose, from each
        repository's newest `tags` and how its scan went (`scanned`); `rejected`: policy ->
        tags never to propose."""
        repos = {r.name: r for r in cfg.repositories}
        latest: dict[str, str] = {}
        for p in cfg.policies:
            # built whole, then shown: a status read while a pattern runs in its child
            # process sees the last one, never a half-made one
            st = await self._status(p, tags.get(p.repository, ()), scanned, rejected)
            self.policies[p.name] = st
            if st.latest:
                latest[p.name] = f"{repos[p.repository].ref}:{st.latest}"
        return latest

    async def _status(
        self,
        p: imagepolicy.ImagePolicy,
        found: tuple[str, ...],
        scanned: Mapping[str, imagestatus.RepositoryStatus],
        rejected: Mapping[str, set[str]],
    ) -> imagestatus.PolicyStatus:
        scan = scanned.get(p.repository)
        st = imagestatus.PolicyStatus(name=p.name, repository=p.repository)
        if scan is None or scan.last_scan == 0.0 or scan.error:
            st.error = (
                f"its repository could not be scanned: {scan.error}"
                if scan is not None and scan.error
                else "waiting for a scan of its repository"
            )
            if not found:
                return st
        choice, hung = await self._choice(p, found, frozenset(rejected.get(p.name, ())))
        st.considered, st.skipped, st.rejected = choice.considered, choice.skipped, choice.rejected
        st.rejected_tags = sorted(rejected.get(p.name, set()))
        if choice.tag is None:
            st.error = (
                hung
                or st.error
                or (
                    f"none of the {len(found)} tags fits the policy"
                    + (f" ({choice.rejected} rejected)" if choice.rejected else "")
                )
            )
            return st
        st.latest = choice.tag
        return st

    async def _choice(
        self, policy: imagepolicy.ImagePolicy, tags: tuple[str, ...], rejected: frozenset[str]
    ) -> _Got:
        """`imagepolicy.choose`, computed again only when the tags, the policy or the
        rejected tags changed (the loop asks every second; 5,000 tags take milliseconds);
        in a child process when the policy has a pattern."""
        key: _Key = (tags, policy, rejected)
        got = self._chosen.get(policy.name)
        if got is not None and (got[0][0] is tags or got[0][0] == tags) and got[0][1:] == key[1:]:
            return got[1]
        pattern = policy.filter.pattern
        if pattern is None and len(tags) <= INLINE_TAGS:
            result: _Got = (imagepolicy.choose(tags, policy, rejected=rejected), "")
        elif pattern is None:  # seconds of Python at 100,000 tags: beside the loop, not in it
            choice = await asyncio.to_thread(chosen, tags, policy, rejected)
            result = (choice, "")
        else:
            try:
                choice = await in_child(f"{__name__}:chosen", tags, policy, rejected)
                result = (choice, "")
            except TooSlow:
                result = (
                    imagepolicy.Choice(None, 0, 0),
                    f"filterTags.pattern {pattern.pattern[:200]!r} ran over {REGEX_SECONDS:g} s "
                    f"on the {len(tags)} tags of repository {policy.repository} and was "
                    "stopped: it backtracks catastrophically on some tag; rewrite it without "
                    "nested repeats such as (a+)+ or (\\w+)*",
                )
            except Exception as e:  # noqa: BLE001 (no process to run it in: this policy waits)
                log.exception("image policy %s: its pattern could not be applied", policy.name)
                result = (
                    imagepolicy.Choice(None, 0, 0),
                    f"filterTags.pattern could not be applied ({type(e).__name__}: "
                    f"{str(e)[:200]}); see the hub's log",
                )
        self._chosen[policy.name] = (key, result)
        return result
