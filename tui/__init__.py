"""The fleetops terminal UI: the fleet at a glance, and the operator's actions.

The TUI is a client of the hub's FleetService and never imports `hub` or `agent`. It is the
only package that imports `textual`.
"""

__version__ = "0.1.0"
