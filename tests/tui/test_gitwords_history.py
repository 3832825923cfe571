"""The TUI's history screen in Git's own words: against a real in-process hub tracking commits
by alice and bob, each assignment row shows its commit's author and subject."""

from __future__ import annotations

import pathlib

from textual.widgets import DataTable, Static

from fleetops.tui import app as tui_app
from fleetops.tui import client as tui_client
from fleetops.tui.widgets.matrix import Matrix
from tests.support import gitwords, wait

SIZE = (160, 30)


async def test_the_history_screen_shows_each_commits_author_and_subject(
    tmp_path: pathlib.Path,
) -> None:
    async with gitwords.two_authors(tmp_path) as world:
        p = world.hub
        creds = tui_client.Credentials(p.address, p.ca_pem, p.running.tokens["readonly"])
        app = tui_app.make_app(client=tui_client.HubClient(creds))
        async with app.run_test(size=SIZE) as pilot:
            matrix = app.screen.query_one("#matrix", Matrix)
            await wait.until("eu-1 in the matrix", lambda: "eu-1" in matrix.rows, pause=pilot.pause)
            matrix.move_cursor(row=0, column=3)  # cluster, agent, ok, web
            await pilot.press("h")
            await wait.until(
                "the history screen",
                lambda: type(app.screen).__name__ == "History",
                pause=pilot.pause,
            )
            table = app.screen.query_one("#events", DataTable)
            await wait.until("events to load", lambda: table.row_count > 0, pause=pilot.pause)
            header = [str(c.label) for c in table.columns.values()]
            rows = [[str(c) for c in table.get_row(r.key)] for r in table.ordered_rows]
            shown = {
                row[header.index("REVISION")]: (
                    row[header.index("AUTHOR")],
                    row[header.index("SUBJECT")],
                )
                for row in rows
                if row[header.index("WHAT")] == "assigned"
            }
            assert shown[world.bob[:8]] == ("Bob Builder", gitwords.BOB_SUBJECT), rows
            assert shown[world.alice[:8]] == ("Alice Liddell", gitwords.ALICE_SUBJECT), rows


async def test_the_app_screen_header_shows_the_head_commits_subject(
    tmp_path: pathlib.Path,
) -> None:
    async with gitwords.two_authors(tmp_path) as world:
        p = world.hub
        creds = tui_client.Credentials(p.address, p.ca_pem, p.running.tokens["readonly"])
        app = tui_app.make_app(client=tui_client.HubClient(creds))
        async with app.run_test(size=SIZE) as pilot:
            matrix = app.screen.query_one("#matrix", Matrix)
            await wait.until("eu-1 in the matrix", lambda: "eu-1" in matrix.rows, pause=pilot.pause)
            matrix.focus()
            matrix.move_cursor(row=0, column=3)  # cluster, agent, ok, web
            await pilot.press("enter")
            await wait.until(
                "the app screen", lambda: bool(app.screen.query("#summary")), pause=pilot.pause
            )
            header = str(app.screen.query_one("#summary", Static).render()).splitlines()[0]
            assert f'head {world.bob[:7]} "{gitwords.BOB_SUBJECT}" by Bob Builder' in header
