"""Background work as plain objects: a task's progress and cancel flag, and who may use torch.

No napari, no Qt: the widget's task runner (:mod:`napari_sam.widget.task_runner`) starts the
threads; what a task is, how it is cancelled and which task may run torch now live here, where
they are tested without a display.

Thread policy
-------------
On a laptop, two torch jobs at once (an embedding and an automatic segmentation, say) each
start an OpenMP team on the same few cores and both slow down several times. So heavy work
runs one job at a time through a :class:`TorchGate`, by priority: decoding a click first (the
user is waiting for it), then model loading and embeddings, then automatic segmentation. A
long job gives the gate up between its steps (encoder blocks, prompt batches: wherever it
reports progress) when a more urgent job waits, so a click is answered within one step of
the running job. Each job uses torch's default thread count (one per physical core); as only
one runs at a time, their OpenMP teams never compete.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from .core.errors import Cancelled

#: Priorities of the kinds of work (lower runs first).
PRIORITY: dict[str, int] = {
    "predict": 0,
    "model": 1,
    "embed": 1,
    "propagate": 1,
    "auto": 2,
    "auto3d": 2,
    "prefetch": 3,
    "embed_all": 3,
}
#: Kinds of work done only ahead of need: any other torch job cancels them (they hold the
#: engine's lock while encoding, so they could not give way within a step). Embedding all
#: slices ("embed_all") is not cancelled: it abandons the slice it is encoding when a more
#: urgent job waits (:meth:`Task.outranked`), lets it run, and carries on.
BACKGROUND = ("prefetch",)
#: How often (seconds) a job waiting for the gate looks at its cancel flag.
_POLL = 0.05


class TorchGate:
    """One heavy torch job at a time, the most urgent first.

    A job calls :meth:`acquire` before its torch work and :meth:`release` after it; in
    between it may call :meth:`yield_` (cheap when nobody more urgent waits).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._holder: int | None = None  # priority of the job holding the gate
        self._waiting: list[int] = []  # priorities of the jobs waiting for it

    def _may_enter(self, priority: int) -> bool:
        return self._holder is None and all(priority <= w for w in self._waiting)

    def acquire(self, priority: int, cancelled: Callable[[], bool] | None = None) -> None:
        """Wait until this job may run; raise :class:`Cancelled` if it is cancelled meanwhile."""
        with self._cond:
            self._waiting.append(priority)
            try:
                while not self._may_enter(priority):
                    if cancelled is not None and cancelled():
                        raise Cancelled("cancelled while waiting for another job")
                    self._cond.wait(_POLL)
            finally:
                self._waiting.remove(priority)
            self._holder = priority

    def release(self) -> None:
        """Let the next job run."""
        with self._cond:
            self._holder = None
            self._cond.notify_all()

    def yield_(self, priority: int, cancelled: Callable[[], bool] | None = None) -> None:
        """Let a more urgent waiting job run first, then continue."""
        if not self.outranked(priority):
            return
        self.release()
        self.acquire(priority, cancelled)

    def outranked(self, priority: int) -> bool:
        """Whether a job more urgent than ``priority`` waits for the gate (cheap, any thread)."""
        with self._cond:
            return any(w < priority for w in self._waiting)

    @property
    def busy(self) -> bool:
        """Whether a job holds the gate."""
        return self._holder is not None


class Task:
    """A job for a worker thread: its progress, its cancel flag and its place at the gate.

    Parameters
    ----------
    kind : str
        What it does (a key of :data:`PRIORITY`); one task of each kind runs per owner.
    label : str
        What users see ("computing image embedding").
    key : object, optional
        What the task was started for (a model key, a plane key), to recognise late results.
    gate : TorchGate, optional
        Shared with the owner's other tasks; the task holds it while its job runs.
    """

    def __init__(
        self, kind: str, label: str, key: Any = None, gate: TorchGate | None = None
    ) -> None:
        self.kind = kind
        self.label = label
        self.key = key
        self.gate = gate
        self.priority = PRIORITY.get(kind, 1)
        self._cancel = threading.Event()
        self.started = threading.Event()  # set when a worker thread has picked the task up
        self.finished = threading.Event()  # set when the job has returned or raised
        #: Whether the job may give the gate up now (e.g. not while it holds a lock that the
        #: more urgent job needs); None: always.
        self.may_yield: Callable[[], bool] | None = None
        #: The thread worker running the task (set by the runner; opaque here).
        self.worker: Any = None
        self.done = 0
        self.total = 0
        self.stage = ""

    def progress(self, done: int, total: int) -> None:
        """Progress callback for the core; called from the worker thread between steps.

        It is also where a cancelled job stops (model downloads only stop here) and where a
        long job lets a more urgent one use torch.
        """
        self.done, self.total = int(done), int(total)
        self.check()
        if self.gate is not None and (self.may_yield is None or self.may_yield()):
            self.gate.yield_(self.priority, self.is_cancelled)

    def outranked(self) -> bool:
        """Whether a more urgent job waits for the gate this task holds.

        Background work polls it inside long steps (the encoder's blocks) to abandon the
        step and give way at its next :meth:`progress` call, rather than make a click wait
        for the whole step.
        """
        return self.gate is not None and self.gate.outranked(self.priority)

    def check(self, stage: str | None = None) -> None:
        """Raise :class:`Cancelled` when cancelled; call between the stages of a job."""
        if stage is not None:
            self.stage = stage
        if self._cancel.is_set():
            raise Cancelled(f"{self.label} cancelled")

    @property
    def fraction(self) -> float | None:
        """Progress in [0, 1], or None while the total is unknown."""
        if self.total <= 0:
            return None
        return min(max(self.done / self.total, 0.0), 1.0)

    def cancel(self) -> None:
        """Ask the job to stop at its next check (it may still finish)."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def is_cancelled(self) -> bool:
        """Cancel check for the core (a callable)."""
        return self._cancel.is_set()

    def run(self, job: Callable[[Task], Any]) -> tuple[bool, Any]:
        """Run ``job(self)`` holding the gate; return ``(True, result)`` or ``(False, error)``.

        Errors come back as values (napari's workers would announce raised exceptions,
        cancellations included, as crashes), and a task cancelled before it starts never
        runs its job.
        """
        self.started.set()
        try:
            self.check()
            if self.gate is None:
                return True, job(self)
            self.gate.acquire(self.priority, self.is_cancelled)
            try:
                self.check()
                return True, job(self)
            finally:
                self.gate.release()
        except BaseException as e:  # MemoryError and KeyboardInterrupt are reported too
            return False, e
        finally:
            self.finished.set()
