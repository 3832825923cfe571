"""History in Git's own words: commits by two authors show up with their author and subject in
`fleetops-hub history` (text and JSON) and the Fleet API, and the auto-sync of bob's commit
names bob next to the mechanism."""

from __future__ import annotations

import asyncio
import json
import pathlib

from fleetops.hub import config, records, repo, store
from fleetops.proto.v1 import types_pb2
from fleetops.tui import client as tui_client
from tests.support import fleet, gitwords


async def hub_cli(hub: gitwords.TwoAuthors, *args: str) -> str:
    """`fleetops-hub ARGS --hub ... --data ...`, as an operator on the hub's machine runs it."""
    proc = await asyncio.create_subprocess_exec(
        str(fleet.BIN / "fleetops-hub"),
        *args,
        "--hub",
        hub.hub.address,
        "--data",
        str(hub.hub.data),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


def assigned(events: list[types_pb2.Event], revision: str) -> types_pb2.Event:
    [found] = [e for e in events if e.kind == "assigned" and e.revision == revision]
    return found


async def test_the_fleet_api_history_names_each_commits_author_and_subject(
    tmp_path: pathlib.Path,
) -> None:
    async with gitwords.two_authors(tmp_path) as world:
        p = world.hub
        client = tui_client.HubClient(
            tui_client.Credentials(p.address, p.ca_pem, p.running.tokens["readonly"])
        )
        try:
            events = list(await client.history(app="web"))
        finally:
            await client.close()
        first, second = assigned(events, world.alice), assigned(events, world.bob)
        assert (first.author, first.author_email, first.subject) == (
            "Alice Liddell", "alice@example.org", gitwords.ALICE_SUBJECT,
        )  # fmt: skip
        assert (second.author, second.author_email, second.subject) == (
            "Bob Builder", "bob@example.net", gitwords.BOB_SUBJECT,
        )  # fmt: skip
        assert second.committed_at.seconds > 0
        # the auto-sync of bob's commit names bob as its origin, next to the mechanism
        assert second.cause == types_pb2.CAUSE_AUTO and second.actor == "auto"
        assert "auto-sync of a commit by Bob Builder" in second.message, second.message
        # what the agent reported applying is in the same words
        applied = [e for e in events if e.kind == "applied" and e.revision == world.bob]
        assert applied and all(e.author == "Bob Builder" for e in applied), events


async def test_history_cli_shows_author_and_subject_in_text_and_json(
    tmp_path: pathlib.Path,
) -> None:
    async with gitwords.two_authors(tmp_path) as world:
        text = await hub_cli(world, "history", "web")
        [bob_line] = [ln for ln in text.splitlines() if "assigned" in ln and world.bob[:8] in ln]
        assert f"[Bob Builder: {gitwords.BOB_SUBJECT}]" in bob_line, text
        assert "auto-sync of a commit by Bob Builder" in bob_line
        [alice_line] = [
            ln for ln in text.splitlines() if "assigned" in ln and world.alice[:8] in ln
        ]
        assert f"[Alice Liddell: {gitwords.ALICE_SUBJECT}]" in alice_line, text
        rows = json.loads(await hub_cli(world, "history", "web", "--output", "json"))
        by_rev = {r["revision"]: r for r in rows if r["kind"] == "assigned"}
        bob = by_rev[world.bob]
        assert bob["author"] == "Bob Builder" and bob["author_email"] == "bob@example.net"
        assert bob["subject"] == gitwords.BOB_SUBJECT and bob["committed_at"]
        assert by_rev[world.alice]["author"] == "Alice Liddell"
        assert by_rev[world.alice]["subject"] == gitwords.ALICE_SUBJECT


def test_an_event_recorded_without_git_words_reads_them_from_the_revision_kept(
    tmp_path: pathlib.Path,
) -> None:
    """An agent's `applied` (or an event from before store v6) names only a SHA; history still
    shows who committed it while the hub keeps that revision."""
    db = store.Store(tmp_path / "hub.db")
    try:
        sha = "ab" * 20
        db.call(
            db.put_revision,
            records.Revision(
                repo="platform", sha=sha, message="web: colour it blue", author="Bob Builder",
                author_email="bob@example.net", time=1_700_000_000, seen_at=1.0,
            ),
        )  # fmt: skip
        db.call(db.record_event, records.NewEvent(kind="applied", message="m", revision=sha))
        [ev] = db.call(db.events, app="", cluster="", limit=10)
        assert (ev.author, ev.author_email, ev.subject, ev.committed_at) == (
            "Bob Builder", "bob@example.net", "web: colour it blue", 1_700_000_000,
        )  # fmt: skip
    finally:
        db.close()


def test_a_huge_commit_subject_is_kept_to_one_bounded_line(tmp_path: pathlib.Path) -> None:
    git = fleet.Repo.create(tmp_path / "git")
    git.write("a.yaml", {"a": 1})
    sha = gitwords.commit_as(git, gitwords.ALICE, "x" * 5000 + "\tend")
    cache = repo.RepoCache(
        tmp_path / "cache", config.Repo(name="platform", url=git.url, branch="main")
    )
    assert cache.fetch() == sha
    got = cache.commit(sha)
    assert len(got.message) == repo.MAX_COMMIT_TEXT and got.message.endswith("…")
    assert (got.author, got.author_email) == ("Alice Liddell", "alice@example.org")
