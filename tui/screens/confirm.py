"""A yes/no question before anything changes the fleet. The question names apps and
revisions from the hub, so it is a Text built with `tui.text`, never a markup string."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static


class Confirm(ModalScreen[bool]):
    BINDINGS = [Binding("y", "answer(True)", "yes"), Binding("n,escape", "answer(False)", "no")]

    def __init__(self, question: Text) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm"):
            yield Static(self.question, id="question")
            yield Static("[b]y[/b] yes    [b]n[/b] no", id="answers")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)
