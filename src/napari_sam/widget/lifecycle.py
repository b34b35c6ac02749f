"""What ties the widget to napari and unties it on close: event connections, key bindings,
and a watcher that notices when napari closes the dock or the whole window."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from napari.utils.key_bindings import coerce_keybinding
from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import QDockWidget, QWidget

from .._session import KEYS


class Connections:
    """napari event connections in named groups, so a group can be dropped at once."""

    def __init__(self) -> None:
        self._groups: dict[str, list[tuple[Any, Callable]]] = {}

    def connect(self, group: str, emitter: Any, callback: Callable) -> None:
        emitter.connect(callback)
        self._groups.setdefault(group, []).append((emitter, callback))

    def disconnect(self, group: str) -> None:
        for emitter, callback in self._groups.pop(group, []):
            try:
                emitter.disconnect(callback)
            except (RuntimeError, ValueError, TypeError):  # pragma: no cover - already gone
                pass

    def disconnect_all(self) -> None:
        for group in list(self._groups):
            self.disconnect(group)


class KeyBindings:
    """The plugin's keys (:data:`~napari_sam._session.KEYS`) on the viewer and on layers.

    Parameters
    ----------
    actions : dict
        Action name -> method to call (``"commit"`` -> ``widget.commit``...).
    alive : callable
        False once the widget is closed: its keys then do nothing.
    owner : object
        The widget, remembered weakly on each handler so that another widget's bindings can
        tell whether the binding they replaced is stale.
    """

    def __init__(
        self, actions: dict[str, Callable[[], Any]], alive: Callable[[], bool], owner: Any
    ) -> None:
        self._funcs = {name: self._handler(func, alive, owner) for name, func in actions.items()}
        self._bound: list[tuple[Any, str, Callable, Any]] = []

    @staticmethod
    def _handler(
        method: Callable[[], Any], alive: Callable[[], bool], owner: Any
    ) -> Callable[[Any], None]:
        def handler(_target: Any) -> None:
            if alive():
                method()

        handler.napari_sam_widget = weakref.ref(owner)  # type: ignore[attr-defined]
        return handler

    def is_bound_on(self, target: Any) -> bool:
        return any(t == target for t, *_ in self._bound)

    def bind(self, target: Any) -> None:
        """Bind the keys on the viewer or on a layer.

        ``overwrite=True``: a second widget (or a reopened one) takes the keys over instead
        of failing; what was bound before is restored by :meth:`unbind_all`.
        """
        for action, key in KEYS.items():
            func = self._funcs[action]
            previous = target.bind_key(key, func, overwrite=True)
            self._bound.append((target, key, func, previous))

    def unbind_all(self) -> None:
        for target, key, func, previous in reversed(self._bound):
            try:
                keymap = target.keymap
            except (RuntimeError, AttributeError):  # pragma: no cover - target deleted
                continue
            if keymap.get(coerce_keybinding(key)) is not func:
                continue  # someone bound this key after us: leave theirs alone
            owner = getattr(previous, "napari_sam_widget", None)
            stale = owner is not None and (owner() is None or owner().closed)
            if previous is not None and not stale:
                target.bind_key(key, previous, overwrite=True)
            else:
                target.bind_key(key, None)
        self._bound.clear()


class CloseWatcher(QObject):
    """Tells the widget when napari closes the dock around ``native`` or its whole window.

    napari's dock close button takes the widget out of its dock (``setParent(None)``) and
    deletes the dock; neither closes the widget. Closing the viewer removes its layers and
    then closes the main window, whose children are deleted soon after. Both must stop the
    widget's work *before* its Qt objects go away.

    Parameters
    ----------
    native : QWidget
        The widget's Qt widget.
    on_close : callable
        The widget is gone for good (dock closed, window closed): stop and clean up.
    on_window_closing : callable
        The main window got a close event: stop all work now (threads must not outlive the
        window). napari may still refuse to close (a confirmation dialog); then
        ``on_window_stays`` is called.
    on_window_stays : callable
        The window stayed open after ``on_window_closing``.
    """

    def __init__(
        self,
        native: QWidget,
        on_close: Callable[[], None],
        on_window_closing: Callable[[], None],
        on_window_stays: Callable[[], None],
    ) -> None:
        super().__init__(native)
        self._native = native
        self._on_close = on_close
        self._on_window_closing = on_window_closing
        self._on_window_stays = on_window_stays
        self._dock: QDockWidget | None = None
        # Weakly: a strong reference would keep napari's whole window alive after it closed.
        self._window_ref: Callable[[], QWidget | None] = lambda: None
        self._had_parent = False
        self.fired = False
        native.installEventFilter(self)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        # Qt calls this from C++: an exception escaping it aborts the process (PyQt6), and
        # while Python tears the watcher down its attributes may already be gone.
        try:
            self._filter(obj, event)
        except Exception:  # pragma: no cover - defensive, see above
            pass
        return False

    def _filter(self, obj: QObject, event: QEvent) -> None:
        kind = event.type()
        if kind == QEvent.Type.Close and obj is self._window_ref() and not self.fired:
            self._on_window_closing()
            QTimer.singleShot(0, self._after_window_close)
        elif obj is self._native and kind == QEvent.Type.ParentChange:
            if self._native.parentWidget() is not None:
                self._had_parent = True
            # napari finishes building the dock after the reparenting: look afterwards.
            QTimer.singleShot(0, self._check)

    def _fire(self) -> None:
        if not self.fired:
            self.fired = True
            self._on_close()

    def _after_window_close(self) -> None:
        if self.fired:
            return
        window = self._window_ref()
        try:
            stays = window is not None and window.isVisible()
        except RuntimeError:  # pragma: no cover - deleted meanwhile
            stays = False
        if stays:
            self._on_window_stays()
        else:
            self._fire()

    def _check(self) -> None:
        if self.fired:
            return
        try:
            parent = self._native.parentWidget()
        except RuntimeError:  # pragma: no cover - deleted meanwhile
            self._fire()
            return
        if parent is None:
            if self._had_parent:
                self._fire()  # taken out of its dock (napari's close button)
            return
        window = self._native.window()
        old = self._window_ref()
        if window is not old and window is not self._native:
            if old is not None:
                old.removeEventFilter(self)
            self._window_ref = weakref.ref(window)
            window.installEventFilter(self)
        while parent is not None and not isinstance(parent, QDockWidget):
            parent = parent.parentWidget()
        if parent is not None and parent is not self._dock:
            self._dock = parent
            parent.destroyed.connect(lambda *_: self._fire())
