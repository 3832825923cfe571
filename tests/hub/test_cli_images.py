"""`fleetops-hub images status|scan` against a real in-process hub scanning a real registry
(Debian's docker-registry, images pushed over the distribution API) and committing to a real
Git repository: what an operator reads after a scan, in text and JSON; a registry refusing the
password shows its error in full and never the password; an unknown repository names the ones
there are; a read-only token reads but may not scan."""

from __future__ import annotations

import asyncio
import json
import pathlib
from typing import Any

import pytest

from fleetops.hub import cli, cli_images
from fleetops.proto.v1 import fleet_pb2
from tests.support import fleet, hubproc, wait
from tests.support import registry as registrypush
from tests.support.imagefleet import BOT, app_repo, docker_config, hub_config, push

PASSWORD = "s3cret-pw"


def setup(root: pathlib.Path, host: str, **repository: Any) -> tuple[fleet.Repo, dict[str, Any]]:
    """A Git repo with one marked image line, and a hub.yaml that keeps it on the newest 1.x."""
    repo = app_repo(root, host)
    return repo, hub_config(repo, host, commit={"author": BOT}, **repository)


async def images_cli(
    proc: hubproc.HubProc, capsys: pytest.CaptureFixture[str], *args: str, role: str = ""
) -> tuple[int, str, str]:
    """`fleetops-hub images ARGS` as an operator on the hub's machine (--data), or with the
    `role`'s token; (exit code, stdout, stderr). Run in a thread: its blocking gRPC calls
    must not stop the hub serving them."""
    argv = ["images", *args, "--hub", proc.address, "--data", str(proc.data)]
    if role:
        argv += ["--token", proc.running.tokens[role]]
    code = await asyncio.to_thread(cli.main, argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def row(out: str, first: str) -> list[str]:
    """The cells of the table line starting with `first` (cells are 2+ spaces apart)."""
    for line in out.splitlines():
        if line.split("  ")[0] == first:
            return [c.strip() for c in line.split("  ") if c.strip()]
    raise AssertionError(f"no line for {first!r} in:\n{out}")


def notes(out: str) -> dict[str, str]:
    """`[n]` -> the full message below the tables, its wrapped lines joined again."""
    found: dict[str, str] = {}
    mark = ""
    for line in out.splitlines():
        if line.startswith("["):
            mark, _, text = line.partition("] ")
            found[mark + "]"] = text
        elif mark and line.startswith(" " * (len(mark) + 2)) and line.strip():
            found[mark + "]"] += " " + line.strip()
        else:
            mark = ""
    return found


async def test_status_after_a_scan_shows_each_repository_policy_and_update(
    tmp_path: pathlib.Path, reg: registrypush.OciRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    push(reg, "1.0.0", "1.1.0", "1.10.0", "2.0.0")
    repo, cfg = setup(tmp_path, reg.host)
    async with hubproc.running(tmp_path / "hub", cfg) as proc:
        commit = await wait.until(
            "the image commit", lambda: proc.hub.image_status().updates[0].last_commit
        )
        code, out, err = await images_cli(proc, capsys, "status")
        assert (code, err) == (0, "")
        header = out.splitlines()[0].split()
        assert header == ["REPOSITORY", "IMAGE", "TAGS", "LAST", "SCAN", "ERROR/WARNING"]
        web = row(out, "web")
        assert web[:3] == ["web", f"{reg.host}/team/web", "4"]
        assert web[3].endswith("s ago") and len(web) == 5 and web[4] == "-"
        assert row(out, "web-stable") == ["web-stable", "web", "1.10.0", "-", "-"]
        update = row(out, "platform-images")
        assert update[:2] == ["platform-images", "platform"]
        assert update[3] == f"{commit[:8]} apps/web/deploy.yaml: web 1.0.0 -> 1.10.0"
        assert update[4] == "-" and "[1]" not in out

        code, out, _ = await images_cli(proc, capsys, "status", "--output", "json")
        doc = json.loads(out)
        assert code == 0
        (r,) = doc["repositories"]
        assert (r["name"], r["tags"], r["error"]) == ("web", 4, "")
        assert doc["policies"][0]["latest"] == "1.10.0"
        (u,) = doc["updates"]
        assert (u["last_commit"], u["commits"]) == (commit, 1)

        # a new tag: `images scan web` waits for the scan and shows what it found
        push(reg, "1.11.0")
        code, out, err = await images_cli(proc, capsys, "scan", "web")
        assert (code, err) == (0, "")
        assert row(out, "web")[2] == "5"
        await wait.until(
            "the policy on 1.11.0", lambda: proc.hub.image_status().policies[0].latest == "1.11.0"
        )


async def test_a_wrong_registry_password_shows_its_error_in_full_and_never_the_password(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with registrypush.registry_server(tmp_path / "reg", auth=f"fleet:{PASSWORD}") as server:
        push(server, "1.0.0", auth=f"fleet:{PASSWORD}")
        creds = tmp_path / "regcred.json"
        wrong = docker_config(creds, server.host, user="fleet", password="wrong-pw-123")
        _, cfg = setup(tmp_path, server.host, auth={"dockerConfigFile": str(creds)})
        async with hubproc.running(tmp_path / "hub", cfg) as proc:
            error = await wait.until(
                "a failed scan", lambda: proc.hub.image_status().repositories[0].error
            )
            code, out, err = await images_cli(proc, capsys, "status")
            assert (code, err) == (0, "")
            web = row(out, "web")
            assert web[2] == "-" and web[4].startswith("error [1]: ")
            # the cell is cut between words; the message is below in full
            cell = web[4].removeprefix("error [1]: ").removesuffix("…")
            rest = error.removeprefix("image repository web: ")
            assert rest.startswith(cell) and rest[len(cell) : len(cell) + 1] in (
                "",
                " ",
                ",",
                ";",
                ":",
            )
            assert notes(out)["[1]"] == " ".join(error.split())
            # the policy waits on that repository: it points at the message, not repeats it
            assert row(out, "web-stable")[2:] == [
                "-",
                "-",
                "error: its repository could not be scanned: see [1]",
            ]
            assert "[2]" not in out
            assert str(creds) in out
            for leak in ("wrong-pw-123", wrong, PASSWORD):
                assert leak not in out

            # scanning now fails the same way: shown, and the exit code says so
            code, out, err = await images_cli(proc, capsys, "scan", "web")
            assert code == 1 and err == ""
            assert row(out, "web")[4].startswith("error [1]: ")
            assert "wrong-pw-123" not in out and wrong not in out


async def test_scan_of_an_unknown_repository_names_the_ones_there_are(
    tmp_path: pathlib.Path, reg: registrypush.OciRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    push(reg, "1.0.0")
    _, cfg = setup(tmp_path, reg.host)
    async with hubproc.running(tmp_path / "hub", cfg) as proc:
        code, out, err = await images_cli(proc, capsys, "scan", "wbe")
        assert (code, out) == (1, "")
        assert err.startswith("fleetops-hub: NOT_FOUND: no image repository 'wbe'")
        assert "imageRepositories: web" in err


async def test_a_read_only_token_reads_the_status_but_may_not_scan(
    tmp_path: pathlib.Path, reg: registrypush.OciRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    push(reg, "1.0.0", "1.2.0")
    _, cfg = setup(tmp_path, reg.host)
    async with hubproc.running(tmp_path / "hub", cfg) as proc:
        await wait.until("a scan", lambda: proc.hub.image_status().policies[0].latest)
        scanned = proc.hub.image_status().repositories[0].last_scan
        code, out, err = await images_cli(proc, capsys, "status", role="readonly")
        assert (code, err) == (0, "")
        assert row(out, "web-stable")[2] == "1.2.0"
        code, out, err = await images_cli(proc, capsys, "scan", role="readonly")
        assert (code, out) == (1, "")
        assert err.startswith("fleetops-hub: PERMISSION_DENIED: ImageScan changes the fleet")
        assert "read-only" in err
        assert proc.hub.image_status().repositories[0].last_scan == scanned


def test_long_and_hostile_text_is_wrapped_between_words_and_shown_plain() -> None:
    """No hub needed: what the table makes of a long error and a change line a committer
    wrote with terminal escapes in it."""
    error = "image update platform-images: " + " ".join(
        f"word{i}-{'x' * (i % 7)}" for i in range(60)
    )
    st = fleet_pb2.ImageStatusResponse(
        updates=[
            fleet_pb2.ImageUpdateStatus(
                name="platform-images",
                repo="platform",
                last_commit="0123456789abcdef",
                last_changes=["apps/\x1b[2Jweb.yaml: r/web:1.0 -> r/web:1.1", "b: x -> y"],
                error=error,
            )
        ]
    )
    lines = cli_images.text_lines(st, now=0.0, width=60)
    out = "\n".join(lines)
    assert "\x1b" not in out
    commit = row(out, "platform-images")[3]
    assert commit.startswith("01234567 apps/\ufffd[2Jweb.yaml: web 1.0 -> 1.1 (+1 more)")
    cell = row(out, "platform-images")[4].removeprefix("error [1]: ")
    assert cell.endswith("…") and error.split(": ", 1)[1].startswith(cell[:-1] + " ")
    assert notes(out)["[1]"] == error
    assert all(len(line) <= 60 for line in lines if line.startswith(("[", " ")))
