"""`fleetops-hub`: the hub's command line.

Parses arguments and hands over to the hub's modules; it holds no logic of its own.
"""

from __future__ import annotations

import argparse
import sys

import hub


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleetops-hub",
        description=(
            "The fleetops hub: watches Git repos, renders each app for each cluster and "
            "serves assignments to the agents that dial in."
        ),
    )
    parser.add_argument("--version", action="version", version=f"fleetops-hub {hub.__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.command is None:
        parser.print_help(sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
