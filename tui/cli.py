"""`fleetops-tui`: the terminal UI's command line.

Parses arguments and hands over to the Textual app; it holds no logic of its own.
"""

from __future__ import annotations

import argparse
import sys

import tui


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleetops-tui",
        description=(
            "The fleetops terminal UI: fleet-wide sync and health at a glance, and the "
            "operator's actions (sync, roll back, pause)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"fleetops-tui {tui.__version__}")
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
