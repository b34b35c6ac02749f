"""The task runner: every background job of the widget starts, ends and is cancelled here.

Each part of the widget hands the runner a job (a function of a :class:`~napari_sam._tasks.Task`
run in a napari thread worker) and a ``done(task, result, error)`` slot. The runner

- owns every worker until it has finished (a replaced or cancelled task stays in
  :attr:`TaskRunner.busy` until its thread is done);
- runs the jobs one at a time on torch through the shared :class:`~napari_sam._tasks.TorchGate`,
  most urgent first;
- calls ``done`` on the GUI thread exactly once per task, with every exception - a
  cancellation, a MemoryError, CUDA running out of memory, a bug - passed as ``error`` and
  reported once, worded for the GUI, if ``done`` itself fails;
- drops results once it is shut down, and shuts down - cancelling every task and waiting for
  the threads - when the widget closes, when napari's window closes, when the application
  quits and at interpreter exit, so that no thread ever signals into deleted Qt objects.
"""

from __future__ import annotations

import atexit
import logging
import time
import weakref
from collections.abc import Callable
from typing import Any

from napari.qt.threading import create_worker

from .._tasks import BACKGROUND, Task, TorchGate
from ..core.errors import Cancelled

log = logging.getLogger(__name__)

#: How long (seconds) closing waits for running jobs to stop at their next check.
SHUTDOWN_WAIT_S = 60.0
_RUNNERS: weakref.WeakSet[TaskRunner] = weakref.WeakSet()
_QUIT_HOOKED = False

Done = Callable[[Task, Any, BaseException | None], None]


class TaskRunner:
    """Starts the widget's jobs in worker threads and owns them until they finish.

    Parameters
    ----------
    report : callable
        ``report(error, what)`` shows an error to the user (used when a ``done`` slot fails).
    changed : callable, optional
        Called on the GUI thread whenever tasks start or end (to refresh progress displays).
    """

    def __init__(
        self,
        report: Callable[[BaseException, str], None],
        changed: Callable[[], None] | None = None,
    ) -> None:
        self.gate = TorchGate()
        self._report = report
        self._changed = changed
        self._current: dict[str, Task] = {}  # the newest task of each kind
        self._running: list[Task] = []  # every task whose result has not come back yet
        self.closed = False
        #: While paused (napari's window is closing) nothing starts and results are dropped.
        self.paused = False
        _RUNNERS.add(self)
        _hook_quit()

    # -- starting --

    def start(
        self,
        kind: str,
        label: str,
        job: Callable[[Task], Any],
        done: Done,
        *,
        key: Any = None,
        uses_torch: bool = True,
        spare: tuple[str, ...] = (),
    ) -> Task | None:
        """Run ``job(task)`` in a worker; ``done(task, result, error)`` gets its outcome.

        A running task of the same kind is cancelled first (its late result is dropped). Jobs
        that use torch take their turn at the runner's :class:`~napari_sam._tasks.TorchGate`
        and cancel background work, except the kinds in ``spare`` (a job that needs what the
        background task is computing waits for it instead); others (hashing, saving) run
        alongside. Returns None (and starts nothing) once the runner is shut down.
        """
        if self.closed or self.paused:
            return None
        self._cancel_kinds((kind,))
        if uses_torch and kind not in BACKGROUND:
            self._cancel_kinds(tuple(k for k in BACKGROUND if k not in spare))
        task = Task(kind, label, key, self.gate if uses_torch else None)
        worker = create_worker(task.run, job, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(lambda outcome: self._deliver(task, done, outcome))
        task.worker = worker
        self._current[kind] = task
        self._running.append(task)
        worker.start()
        self._notify()
        return task

    # -- ending --

    def _deliver(self, task: Task, done: Done, outcome: tuple[bool, Any]) -> None:
        """On the GUI thread: hand a finished task's outcome to its ``done`` slot, once."""
        if task in self._running:
            self._running.remove(task)
        current = self._current.get(task.kind) is task
        if current:
            del self._current[task.kind]
        if self.closed or self.paused:
            return
        ok, value = outcome
        result, error = (value, None) if ok else (None, value)
        if ok and task.cancelled and task.kind != "predict":
            # Finished before it saw the cancel: the user asked for nothing, so nothing comes.
            result, error = None, Cancelled(f"{task.label} cancelled")
        try:
            done(task, result, error)
        except Exception as e:  # a bug in a slot must not escape into Qt
            self._report(e, f"{task.label} could not be shown")
        self._notify()

    def _notify(self) -> None:
        if self._changed is not None and not self.closed:
            try:
                self._changed()
            except RuntimeError:  # pragma: no cover - Qt objects already deleted
                self.closed = True

    # -- state and control --

    def current(self, kind: str) -> Task | None:
        """The newest task of ``kind`` that has not ended."""
        return self._current.get(kind)

    def tasks(self) -> list[Task]:
        """The current task of each kind, in start order."""
        return list(self._current.values())

    @property
    def busy(self) -> bool:
        """Whether any task, replaced or cancelled ones included, is still running."""
        return bool(self._running)

    def cancel(self, *kinds: str) -> None:
        """Cancel the current tasks of ``kinds`` (of every kind when none is given)."""
        self._cancel_kinds(kinds or tuple(self._current))

    def _cancel_kinds(self, kinds: tuple[str, ...]) -> None:
        for kind in kinds:
            task = self._current.pop(kind, None)
            if task is not None:
                task.cancel()
        self._notify()

    def shutdown(self, wait_s: float = SHUTDOWN_WAIT_S) -> bool:
        """Stop for good: :meth:`pause`, and never start or deliver anything again."""
        self.closed = True
        return self.pause(wait_s)

    def resume(self) -> None:
        """Accept tasks again after :meth:`pause` (napari's window did not close after all)."""
        self.paused = False

    def pause(self, wait_s: float = SHUTDOWN_WAIT_S) -> bool:
        """Cancel everything, drop late results and wait for the worker threads to end.

        Blocks the caller (napari is closing) until every started job has returned and its
        worker has stopped signalling, at most ``wait_s``; returns whether all did.
        """
        self.paused = True
        for task in self._running:
            task.cancel()
        self._current.clear()
        deadline = time.monotonic() + wait_s
        while True:
            pending = [t for t in self._running if _still_running(t)]
            if not pending:
                return True
            if time.monotonic() > deadline:
                log.warning(
                    "napari-sam: %s still running after %.0f s at shutdown",
                    ", ".join(t.label for t in pending),
                    wait_s,
                )
                return False
            time.sleep(0.01)


def _still_running(task: Task) -> bool:
    """Whether a task's thread may still touch its worker's Qt signals."""
    if not task.started.is_set():
        return False  # never picked up by a thread: it will find itself cancelled
    if not task.finished.is_set():
        return True
    # The job has returned; the worker is signalling the result and then stops.
    return bool(getattr(task.worker, "_running", False))


def shutdown_all() -> None:
    """Shut every runner down (the application is quitting or the interpreter exiting)."""
    for runner in list(_RUNNERS):
        runner.shutdown()


def _hook_quit() -> None:
    """Shut down at application quit and at interpreter exit, once per process."""
    global _QUIT_HOOKED
    if _QUIT_HOOKED:
        return
    _QUIT_HOOKED = True
    atexit.register(shutdown_all)
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    if app is not None:
        app.aboutToQuit.connect(shutdown_all)
