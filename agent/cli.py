"""`fleetops-agent`: the agent's command line.

Parses arguments and hands over to the agent's modules; it holds no logic of its own.
"""

from __future__ import annotations

import argparse
import sys

import agent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleetops-agent",
        description=(
            "The fleetops agent: runs in one cluster, pulls its assignments from the hub and "
            "reconciles them with server-side apply, prune, drift detection and self-heal."
        ),
    )
    parser.add_argument(
        "--version", action="version", version=f"fleetops-agent {agent.__version__}"
    )
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
