"""Which tag each image policy proposes now: hub.imagepolicy's choice over its repository's
newest scan, with the rejected tags left out, and the status that says why there is none.
Computed again only when the tags, the policy or the rejected tags changed (the loop asks
every second; 5,000 tags take milliseconds)."""

from __future__ import annotations

from collections.abc import Mapping

from fleetops.hub import imagepolicy, imagespec, imagestatus

_Key = tuple[tuple[str, ...], imagepolicy.ImagePolicy, frozenset[str], imagepolicy.Choice]


class Chooser:
    def __init__(self) -> None:
        self.policies: dict[str, imagestatus.PolicyStatus] = {}
        self._chosen: dict[str, _Key] = {}

    def forget(self, names: set[str]) -> None:
        """Only policies in `names` stay (the others left hub.yaml)."""
        for gone in set(self.policies) - names:
            del self.policies[gone]
        for gone in set(self._chosen) - names:
            del self._chosen[gone]

    def choose(
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
            found = tags.get(p.repository, ())
            scan = scanned.get(p.repository)
            st = imagestatus.PolicyStatus(name=p.name, repository=p.repository)
            self.policies[p.name] = st
            if scan is None or scan.last_scan == 0.0 or scan.error:
                st.error = (
                    f"its repository could not be scanned: {scan.error}"
                    if scan is not None and scan.error
                    else "waiting for a scan of its repository"
                )
                if not found:
                    continue
            choice = self._choice(p, found, frozenset(rejected.get(p.name, ())))
            st.considered, st.skipped, st.rejected = (
                choice.considered,
                choice.skipped,
                choice.rejected,
            )
            st.rejected_tags = sorted(rejected.get(p.name, set()))
            if choice.tag is None:
                st.error = st.error or (
                    f"none of the {len(found)} tags fits the policy"
                    + (f" ({choice.rejected} rejected)" if choice.rejected else "")
                )
                continue
            st.latest = choice.tag
            latest[p.name] = f"{repos[p.repository].ref}:{choice.tag}"
        return latest

    def _choice(
        self, policy: imagepolicy.ImagePolicy, tags: tuple[str, ...], rejected: frozenset[str]
    ) -> imagepolicy.Choice:
        """`imagepolicy.choose`, computed again only when the tags, the policy or the
        rejected tags changed (the loop asks every second; 5,000 tags take milliseconds)."""
        got = self._chosen.get(policy.name)
        if got is not None and got[0] is tags and got[1] == policy and got[2] == rejected:
            return got[3]
        choice = imagepolicy.choose(tags, policy, rejected=rejected)
        self._chosen[policy.name] = (tags, policy, rejected, choice)
        return choice
