"""`?`: every key, and what the colours mean."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

HELP = """\
[b]fleetops[/b]: clusters down, apps across; each cell is sync, health and revision
(applied→desired when they differ, 📌 when pinned). Narrow terminals show short cells:
ok/ok = Synced/Healthy, OOS = OutOfSync, pend = Pending, FAIL = ApplyFailed, DEGR = Degraded.
OK is how many of the cluster's apps are fine; each app's header counts its fine clusters.
AGENT is the agent's connection (Lost HH:MMZ: last seen then). Wide fleets scroll sideways
with the cluster columns fixed.

[b]Keys[/b]
  arrows / mouse   move between cells (pgup/pgdn, home/end: by page, to the ends)
  enter / click    the app in this column: every cluster, reasons, resources, drift
                   (on the first three columns: the cluster)
  c                the cluster in this row: connectivity, certificate, the labels and
                   groups that decide its apps, apart from what its agent says about
                   itself (versions, facts: shown, never used for targeting), its apps
  /                filter by cluster name, label (env=prod), group (group=canary) or state
                   (Degraded, OutOfSync, Disconnected); several words must all match
  o                sort by name or worst first
  s                sync the app in this column now (asks first)
  u                unpin the app in this column (after a rollback)
  p                pause or resume the app in this column
  h                the app's history; there, r rolls back to the selected revision
  R, o (app screen) the app's rollout: steps, clusters per step (Waiting, Progressing,
                   Baking 4m12s left, Passed, Failed, Deferred), gate values against
                   their thresholds; there g promotes the running step, p pauses or
                   resumes, a aborts (reverts), r retries a rejected revision (asks first)
  ?                this help          q  quit

GATE says what holds a cluster back: a pin, a pause, an offline agent, else its place in
the app's rollout (waiting, progressing, baking, deferred, failed, halted, done).

[b]Colours[/b] (worst wins)
  green  Synced and Healthy         blue    Pending, Applying or Progressing
  orange OutOfSync, Missing, Unknown, or the cluster is offline
  red    ApplyFailed or Degraded

A read-only token can look at everything and change nothing.
Text from the hub is shown as it was sent: brackets are not markup, and control characters
show as ^[ (escape), ^J (newline) or <U+202E> instead of acting on the terminal.
States this version does not know show as Unknown.
"""


class Help(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss_help", "close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Static(HELP)

    def action_dismiss_help(self) -> None:
        self.dismiss(None)
