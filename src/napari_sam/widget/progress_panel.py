"""The progress row (label, bar, Cancel) and the matching bars in napari's activity dock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from magicgui.widgets import Container, Label, ProgressBar, PushButton
from qtpy.QtCore import QTimer

from .._tasks import Task
from .task_runner import TaskRunner

#: Kinds of task shown with a bar (a click's prediction is too short to show).
SHOWN = ("auto", "auto3d", "propagate", "model", "embed", "embed_all")
#: The bar counts in thousandths: Qt's progress bars hold 32-bit ints, and byte counts of
#: large downloads (vit_h: 2.6e9) do not fit.
STEPS = 1000
_MIB = 1024 * 1024


def describe(task: Task) -> str:
    """What the progress label says for ``task``."""
    text = f"{task.label.capitalize()}…"
    if task.kind == "model" and task.total > _MIB:  # a download: say how far, in MiB
        text += f" {task.done / _MIB:.0f} of {task.total / _MIB:.0f} MiB"
    elif task.kind == "embed_all" and task.total:
        text += f" embedded {task.done}/{task.total} slices"
    return text


class ProgressPanel(Container):
    """Shows the runner's longest-running visible task; Cancel calls ``on_cancel``."""

    def __init__(self, runner: TaskRunner, on_cancel: Callable[[], None]) -> None:
        self.text = Label(value="", visible=False)
        self.bar = ProgressBar(value=0, min=0, max=STEPS, visible=False)
        self.cancel_button = PushButton(
            text="Cancel",
            visible=False,
            tooltip="Stop loading the model, computing the embedding or segmenting.",
        )
        row = Container(widgets=[self.bar, self.cancel_button], layout="horizontal", labels=False)
        super().__init__(widgets=[self.text, row], labels=False)
        self.margins = (0, 0, 0, 0)
        self._runner = runner
        self._pbars: dict[int, Any] = {}  # id(task) -> napari progress in the activity dock
        self.cancel_button.clicked.connect(on_cancel)
        self.timer = QTimer(self.native)
        self.timer.setInterval(100)
        self.timer.timeout.connect(self.refresh)

    def refresh(self) -> None:
        """Mirror the runner's tasks (called on start/end and every 100 ms while busy)."""
        shown = [t for t in self._runner.tasks() if t.kind in SHOWN]
        self._sync_activity(shown)
        if not shown:
            self.timer.stop()
            for w in (self.bar, self.text, self.cancel_button):
                w.visible = False
            return
        if not self.timer.isActive():
            self.timer.start()
        task = shown[0]
        for w in (self.bar, self.text, self.cancel_button):
            w.visible = True
        self.text.value = describe(task)
        fraction = task.fraction
        self.bar.value = 0 if fraction is None else round(fraction * STEPS)

    def _sync_activity(self, shown: list[Task]) -> None:
        """napari's activity dock: one bar per task (created on the GUI thread)."""
        from napari.utils import progress

        alive = {id(t) for t in shown}
        for key in [k for k in self._pbars if k not in alive]:
            self._pbars.pop(key).close()
        for task in shown:
            pbar = self._pbars.get(id(task))
            if pbar is None:
                pbar = progress(total=STEPS, desc=f"napari-sam: {task.label}")
                self._pbars[id(task)] = pbar
            fraction = task.fraction
            n = 0 if fraction is None else round(fraction * STEPS)
            if n > pbar.n:
                pbar.update(n - pbar.n)

    def close_all(self) -> None:
        """Close the activity-dock bars and stop polling (the widget is closing)."""
        try:
            self.timer.stop()
        except RuntimeError:  # pragma: no cover - Qt object already deleted
            pass
        for pbar in self._pbars.values():
            pbar.close()
        self._pbars.clear()
