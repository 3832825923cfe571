"""The fleetops hub: tracks Git, renders each app per cluster, assigns revisions, serves agents.

The hub never holds cluster credentials and never imports `agent` or `tui`; it shares only
`proto` with them.
"""

__version__ = "0.1.0"
