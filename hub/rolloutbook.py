"""An app's rollout book (its newest rollout, every cluster's last good revision, the
revisions it rejected, where a revert sends clusters) and what an operator may do to it.

Pure: values and rules, no I/O; hub.rollouts keeps the books in the store and acts on them.
"""

from __future__ import annotations

import dataclasses
import json

from fleetops.hub import config, errors, rollout, status


@dataclasses.dataclass
class Book:
    """What the hub keeps for one app's rollouts."""

    state: rollout.State | None = None
    last_good: dict[str, str] = dataclasses.field(default_factory=dict)  # cluster -> revision
    rejected: dict[str, str] = dataclasses.field(default_factory=dict)  # revision -> why
    reverts: dict[str, str] = dataclasses.field(default_factory=dict)  # cluster -> revision
    stable: str = ""  # the last revision that passed every step

    def to_json(self) -> str:
        return json.dumps(
            {
                "state": self.state.to_json() if self.state else None,
                "last_good": self.last_good,
                "rejected": self.rejected,
                "reverts": self.reverts,
                "stable": self.stable,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Book:
        doc = json.loads(text)
        state = doc.get("state")
        return cls(
            state=rollout.State.from_json(state) if state else None,
            last_good=dict(doc.get("last_good") or {}),
            rejected=dict(doc.get("rejected") or {}),
            reverts=dict(doc.get("reverts") or {}),
            stable=str(doc.get("stable") or ""),
        )


def control(app: config.App, book: Book, *, action: str, actor: str) -> str:
    """pause | resume | promote | abort | retry on the app's book: what happened, in words
    for the history; FailedPrecondition when the rollout's state does not allow it now."""
    state = book.state
    if action == "retry":
        revision = state.revision if state is not None else ""
        halted = state is not None and state.phase == rollout.HALTED
        if not revision or (revision not in book.rejected and not halted):
            raise errors.FailedPrecondition(
                f"app {app.name}: nothing to retry: its latest rollout"
                + (f" of {status.short(revision)} is {state.phase}" if state else " does not exist")
                + " (retry rolls a rejected or halted revision again)"
            )
        book.rejected.pop(revision, None)  # other rejected revisions stay rejected
        if state is not None:
            state.phase = rollout.SUPERSEDED  # `prepare` starts it again from step one
            book.state = None
        return f"retry by {actor}: {status.short(revision)} rolls out again from the first step"
    if state is None or state.phase not in rollout.ACTIVE:
        phase = state.phase if state is not None else "none"
        raise errors.FailedPrecondition(
            f"app {app.name}: no rollout is running (the latest is {phase}); "
            f"`fleetops-hub rollout status {app.name}` shows it"
        )
    if action == "pause":
        state.phase = rollout.PAUSED
        return f"rollout of {status.short(state.revision)} paused by {actor}"
    if action == "resume":
        state.phase = rollout.RUNNING
        return f"rollout of {status.short(state.revision)} resumed by {actor}"
    if action == "promote":
        if not rollout.promote(state):
            raise errors.FailedPrecondition(f"app {app.name}: this step was promoted already")
        step = app.rollout.steps[state.step].name if app.rollout else "?"
        return f"step {step} of {status.short(state.revision)} promoted by {actor}"
    if action == "abort":
        state.phase = rollout.ABORTED
        state.reason = f"aborted by {actor}"
        return f"rollout of {status.short(state.revision)} aborted by {actor}"
    raise errors.InvalidArgument(
        f"unknown rollout action {action!r}: use pause, resume, promote, abort or retry"
    )
