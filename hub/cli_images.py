"""`fleetops-hub images status|scan`: image automation as a running hub's FleetService tells
it, printed so a tired operator reads it in a second: one table per kind (repositories,
policies, updates) with a short cell for each error or warning, and every such message in full
below the tables, wrapped between words.

Everything from the hub goes through `cli_output.plain` (tags come from registries, changes
from committed files). No image logic: the hub scans and decides, this only asks and shows.
"""

from __future__ import annotations

import argparse
import json
import shutil
import textwrap
import time
from collections.abc import Callable, Sequence

from google.protobuf import json_format, timestamp_pb2

from fleetops.hub import cli_admin
from fleetops.hub.cli_output import plain
from fleetops.proto.rollouttext import span
from fleetops.proto.v1 import fleet_pb2, fleet_pb2_grpc

CELL_MOST = 44  # characters of a message its table cell shows (the rest is in the notes)
SCAN_WAIT = 60.0  # seconds `images scan` waits for the scans it asked for
SCAN_POLL = 0.5


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    client_args: Callable[[argparse.ArgumentParser], None],
) -> argparse.ArgumentParser:
    """`images status` and `images scan [REPOSITORY]` on `fleetops-hub`'s subparsers, each
    with the same connection and credential options as every admin command."""
    im = sub.add_parser("images", help="image automation: what each registry scan found, scan now")
    ims = im.add_subparsers(dest="images_command", metavar="SUBCOMMAND", required=True)
    st = ims.add_parser(
        "status",
        help="per image repository, policy and update: last scan, tags, chosen tag, last "
        "commit, errors (read-only)",
    )
    client_args(st)
    sc = ims.add_parser(
        "scan",
        help="scan an image repository now (default: every one) and show what the scan found",
    )
    sc.add_argument("repository", nargs="?", default="", help="an imageRepositories name")
    sc.add_argument(
        "--no-wait", action="store_true", help="only ask for the scan; do not wait for it"
    )
    client_args(sc)
    return im


def age(stamp: timestamp_pb2.Timestamp, *, now: float) -> str:
    """`12s ago` from a Timestamp; `never` when it is unset."""
    if not stamp.seconds and not stamp.nanos:
        return "never"
    return f"{span(max(0.0, now - stamp.seconds))} ago"


def cut(text: str, most: int = CELL_MOST) -> str:
    """`text` in at most `most` characters, cut between words (with …) when longer."""
    text = " ".join(text.split())
    if len(text) <= most:
        return text
    head = text[: most - 1]
    if " " in head and text[most - 1] != " ":
        head = head.rsplit(" ", 1)[0]
    return head.rstrip(" ,;:") + "…"


def change(text: str) -> str:
    """`apps/web/deploy.yaml: reg/team/web:1.0 -> reg/team/web:1.1` as
    `apps/web/deploy.yaml: web 1.0 -> 1.1` when only the tag changed."""
    file, sep, rest = text.partition(": ")
    old, arrow, new = rest.partition(" -> ")
    if not sep or not arrow:
        return text
    old_name, _, old_tag = old.rpartition(":")
    new_name, _, new_tag = new.rpartition(":")
    if old_name != new_name or "/" in old_tag or "/" in new_tag or not old_name:
        return text
    return f"{file}: {old_name.rsplit('/', 1)[-1]} {old_tag} -> {new_tag}"


class Notes:
    """Messages too long for a cell: numbered, shown in full below the tables."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def cell(self, kind: str, message: str, *, prefix: str = "") -> str:
        """`error [1]: registry said…` (the message without `prefix`, cut for the table), or
        `error: ... see [1]` when it only repeats an earlier message."""
        if not message:
            return ""
        for i, earlier in enumerate(self.items, 1):
            said = message.replace(earlier, f"see [{i}]")
            if earlier in message and len(said) <= CELL_MOST:
                return f"{kind}: {said}"  # e.g. a policy's repository that failed its scan
        self.items.append(message)
        return f"{kind} [{len(self.items)}]: {cut(message.removeprefix(prefix))}"

    def lines(self, width: int) -> list[str]:
        out: list[str] = []
        for i, message in enumerate(self.items, 1):
            mark = f"[{i}] "
            out += textwrap.wrap(
                message,
                width=max(40, width),
                initial_indent=mark,
                subsequent_indent=" " * len(mark),
                break_long_words=False,
                break_on_hyphens=False,
            ) or [mark]
        return out


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Columns padded to their widest cell; the last one is left as it is; '' shows as -."""
    cells = [[c or "-" for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]) - 1)]
    return [
        ("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1]).rstrip()
        for row in cells
    ]


def text_lines(st: fleet_pb2.ImageStatusResponse, *, now: float, width: int = 100) -> list[str]:
    """The status as text: three tables, then the messages in full (made plain)."""
    if not (st.repositories or st.policies or st.updates):
        return [
            "no image automation: hub.yaml has no imageRepositories, imagePolicies or "
            "imageUpdates (or the hub has not scanned yet)"
        ]
    notes = Notes()
    out: list[str] = []
    if st.repositories:
        rows = [("REPOSITORY", "IMAGE", "TAGS", "LAST SCAN", "ERROR/WARNING")]
        for r in st.repositories:
            scanned = bool(r.last_scan.seconds or r.last_scan.nanos)
            problem = notes.cell(
                "error", plain(r.error), prefix=f"image repository {r.name}: "
            ) or notes.cell("warning", plain(r.warning))
            tags = str(r.tags) if scanned and (r.tags or not r.error) else ""
            rows.append((plain(r.name), plain(r.image), tags, age(r.last_scan, now=now), problem))
        out += _table(rows)
    if st.policies:
        out += [""] if out else []
        rows = [("POLICY", "REPOSITORY", "LATEST", "REJECTED", "ERROR")]
        for p in st.policies:
            rows.append(
                (
                    plain(p.name),
                    plain(p.repository),
                    plain(p.latest),
                    plain(", ".join(p.rejected_tags)),
                    notes.cell("error", plain(p.error)),
                )
            )
        out += _table(rows)
    if st.updates:
        out += [""] if out else []
        rows = [("UPDATE", "REPO", "LAST RUN", "LAST COMMIT", "ERROR/WARNING")]
        for u in st.updates:
            commit = ""
            if u.last_commit:
                commit = u.last_commit[:8]
                if u.last_changes:
                    commit += " " + cut(plain(change(u.last_changes[0])), 60)
                if len(u.last_changes) > 1:
                    commit += f" (+{len(u.last_changes) - 1} more)"
            problem = notes.cell("error", plain(u.error), prefix=f"image update {u.name}: ")
            if not problem and u.problems:
                problem = notes.cell(
                    "warning",
                    plain(f"{len(u.problems)} marker(s) not rewritten: " + "; ".join(u.problems)),
                )
            rows.append((plain(u.name), plain(u.repo), age(u.last_run, now=now), commit, problem))
        out += _table(rows)
    if notes.items:
        out += ["", *notes.lines(width)]
    return out


def print_status(st: fleet_pb2.ImageStatusResponse, *, output: str) -> int:
    if output == "json":
        doc = json_format.MessageToDict(
            st, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        print(json.dumps(doc, indent=2))
        return 0
    width = shutil.get_terminal_size((100, 24)).columns
    for line in text_lines(st, now=time.time(), width=width):
        print(line)
    return 0


def _scanned(
    before: fleet_pb2.ImageStatusResponse, after: fleet_pb2.ImageStatusResponse, names: set[str]
) -> bool:
    """Whether every repository in `names` has a scan newer than in `before`."""
    old = {r.name: r.last_scan.ToNanoseconds() for r in before.repositories}
    new = {r.name: r.last_scan.ToNanoseconds() for r in after.repositories}
    return all(new.get(n, 0) > old.get(n, 0) for n in names)


def _scan(
    stub: fleet_pb2_grpc.FleetServiceStub,
    meta: tuple[tuple[str, str | bytes], ...],
    ns: argparse.Namespace,
) -> int:
    """Ask for the scan; unless --no-wait, wait for it and show the repositories it scanned
    (exit 1 when one of them failed)."""
    before = stub.ImageStatus(fleet_pb2.ImageStatusRequest(), metadata=meta, timeout=30)
    asked = stub.ImageScan(
        fleet_pb2.ImageScanRequest(repository=ns.repository), metadata=meta, timeout=30
    )
    if ns.no_wait:
        print(plain(asked.message))
        return 0
    names = {ns.repository} if ns.repository else {r.name for r in before.repositories}
    deadline = time.monotonic() + SCAN_WAIT
    after = before
    while names and time.monotonic() < deadline:
        after = stub.ImageStatus(fleet_pb2.ImageStatusRequest(), metadata=meta, timeout=30)
        if _scanned(before, after, names):
            break
        time.sleep(SCAN_POLL)  # a wait for the hub's scan, in the CLI
    else:
        print(plain(asked.message))
        if names:
            print(f"the scan has not finished after {SCAN_WAIT:.0f}s; see `images status`")
        return 0
    shown = fleet_pb2.ImageStatusResponse(
        repositories=[r for r in after.repositories if r.name in names]
    )
    if ns.output == "json":
        return print_status(shown, output="json")
    width = shutil.get_terminal_size((100, 24)).columns
    for line in text_lines(shown, now=time.time(), width=width):
        print(line)
    return 1 if any(r.error for r in shown.repositories) else 0


def run(ns: argparse.Namespace) -> int:
    """Run `images ...` against the hub; the exit code (a refusal raises grpc.RpcError, which
    `fleetops-hub`'s main prints with the hub's message)."""
    with cli_admin.connect(ns) as (stub, meta):
        if ns.images_command == "status":
            got = stub.ImageStatus(fleet_pb2.ImageStatusRequest(), metadata=meta, timeout=30)
            return print_status(got, output=ns.output)
        return _scan(stub, meta, ns)
