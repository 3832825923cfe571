"""The fleetops agent: runs inside one cluster, pulls its assignments and reconciles them.

The agent never imports `hub` or `tui`; it shares only `proto` with them. Only `agent.kube`
imports the `kubernetes` client.
"""

__version__ = "0.1.0"
