"""`fleetops-tui`: open the fleet view on a running hub. Parses arguments and starts the app."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fleetops import tui
from fleetops.tui import app, client


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleetops-tui",
        description="The fleetops terminal UI: fleet-wide sync and health at a glance, and the "
        "operator's actions (sync, unpin, pause).",
    )
    parser.add_argument("--version", action="version", version=f"fleetops-tui {tui.__version__}")
    parser.add_argument("--hub", default="", help="the hub's HOST:PORT (env FLEETOPS_HUB)")
    parser.add_argument("--token", default="", help="fleet API token (env FLEETOPS_TOKEN)")
    parser.add_argument("--ca", default="", help="the hub's CA file (env FLEETOPS_CA)")
    parser.add_argument("--data", default="", help="the hub's data dir (reads its CA and a token)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        creds = client.Credentials.find(hub=ns.hub, token=ns.token, ca=ns.ca, data=ns.data)
    except (client.CredentialsError, OSError) as e:
        print(f"fleetops-tui: {e}", file=sys.stderr)
        return 2
    app.make_app(client=client.HubClient(creds)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
