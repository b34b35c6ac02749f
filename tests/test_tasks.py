"""The plain task objects and the torch gate (no Qt): cancel, errors as values, priorities."""

from __future__ import annotations

import threading
import time

import pytest

from napari_sam._tasks import PRIORITY, Task, TorchGate
from napari_sam.core.errors import Cancelled, NapariSamError


def test_a_task_cancelled_before_it_starts_never_runs_its_job():
    ran = []
    task = Task("embed", "computing image embedding")
    task.cancel()
    ok, error = task.run(lambda t: ran.append(1))
    assert not ok and isinstance(error, Cancelled) and ran == []
    assert task.finished.is_set()


def test_errors_come_back_as_values_memory_errors_included():
    def boom(_t):
        raise MemoryError("no memory")

    ok, error = Task("auto", "automatic segmentation").run(boom)
    assert not ok and isinstance(error, MemoryError)


def test_progress_stops_a_cancelled_job_between_steps():
    task = Task("model", "loading model")
    steps = []

    def job(t):
        for i in range(5):
            t.progress(i, 5)
            steps.append(i)
            if i == 1:
                t.cancel()

    ok, error = task.run(job)
    assert not ok and isinstance(error, Cancelled) and steps == [0, 1]
    assert "loading model cancelled" in str(error)


def test_fraction_is_bounded_and_unknown_without_total():
    task = Task("model", "download")
    assert task.fraction is None
    task.done, task.total = 2_564_550_879, 2_564_550_879  # vit_h: above 2**31
    assert task.fraction == 1.0
    task.done = 10**12
    assert task.fraction == 1.0


def test_gate_runs_one_job_at_a_time():
    gate = TorchGate()
    inside = []
    overlap = []

    def job(t):
        inside.append(1)
        overlap.append(len(inside))
        time.sleep(0.02)
        inside.pop()

    threads = [
        threading.Thread(target=Task(k, k, gate=gate).run, args=(job,))
        for k in ("embed", "auto", "predict", "model")
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join(10)
    assert overlap and max(overlap) == 1


def test_a_waiting_click_goes_before_a_waiting_embedding_and_preempts_auto():
    """Auto segmentation holds the gate; an embedding, then a click, start waiting. At auto's
    next step both more urgent jobs run, the click first, and auto resumes after them."""
    assert PRIORITY["predict"] < PRIORITY["embed"] < PRIORITY["auto"]
    gate = TorchGate()
    order: list[str] = []
    auto_started = threading.Event()
    release_auto = threading.Event()

    def auto_job(t):
        order.append("auto 1")
        auto_started.set()
        assert release_auto.wait(10)
        t.progress(1, 2)  # a step boundary: yields to the waiting, more urgent jobs
        order.append("auto 2")

    auto = threading.Thread(target=Task("auto", "auto", gate=gate).run, args=(auto_job,))
    auto.start()
    assert auto_started.wait(10)
    embed = threading.Thread(
        target=Task("embed", "embed", gate=gate).run, args=(lambda t: order.append("embed"),)
    )
    embed.start()
    time.sleep(0.1)
    click = threading.Thread(
        target=Task("predict", "click", gate=gate).run, args=(lambda t: order.append("click"),)
    )
    click.start()
    time.sleep(0.1)
    release_auto.set()
    for th in (auto, embed, click):
        th.join(10)
    assert order == ["auto 1", "click", "embed", "auto 2"]


def test_a_job_inside_a_forward_pass_does_not_yield():
    """A job that holds the engine's lock must not pause for a job that needs that lock."""
    gate = TorchGate()
    order: list[str] = []
    started = threading.Event()
    go = threading.Event()

    def embed_job(t):
        t.may_yield = lambda: False  # as if inside SamEngine's locked forward pass
        started.set()
        assert go.wait(10)
        t.progress(1, 2)
        order.append("embed done")

    a = threading.Thread(target=Task("embed", "e", gate=gate).run, args=(embed_job,))
    a.start()
    assert started.wait(10)
    b = threading.Thread(
        target=Task("predict", "c", gate=gate).run, args=(lambda t: order.append("click"),)
    )
    b.start()
    time.sleep(0.1)
    go.set()
    for th in (a, b):
        th.join(10)
    assert order == ["embed done", "click"]


def test_a_job_waiting_for_the_gate_can_be_cancelled():
    gate = TorchGate()
    gate.acquire(0)
    task = Task("auto", "auto", gate=gate)
    result = {}

    def run():
        result["outcome"] = task.run(lambda t: "ran")

    th = threading.Thread(target=run)
    th.start()
    time.sleep(0.1)
    task.cancel()
    th.join(5)
    gate.release()
    ok, error = result["outcome"]
    assert not ok and isinstance(error, Cancelled)
    assert not gate.busy


@pytest.mark.parametrize(
    ("error", "cli", "gui"),
    [
        (
            NapariSamError("no file", cli_hint="pass --checkpoint PATH", gui_hint="choose a file"),
            "no file; pass --checkpoint PATH",
            "no file; choose a file",
        ),
        (NapariSamError("plain"), "plain", "plain"),
    ],
)
def test_errors_carry_a_hint_for_the_cli_and_one_for_the_widget(error, cli, gui):
    assert str(error) == cli
    assert error.for_gui() == gui


def test_neighbour_planes_nearest_first_inside_the_data():
    from napari_sam._layers import Plane, neighbour_planes

    plane = Plane(axes=(1, 2), index=(1, None, None), shape=(8, 9))
    got = [p.index for p in neighbour_planes(plane, (4, 8, 9), axis=0, reach=2)]
    assert got == [(2, None, None), (0, None, None), (3, None, None)]  # -1 is outside
    assert neighbour_planes(plane, (4, 8, 9), axis=1, reach=2) == []  # a displayed axis
    t = Plane(axes=(2, 3), index=(5, 0, None, None), shape=(8, 9))
    got = [p.index for p in neighbour_planes(t, (10, 3, 8, 9), axis=0, reach=1)]
    assert got == [(6, 0, None, None), (4, 0, None, None)]


def test_a_background_task_sees_when_a_more_urgent_job_waits():
    gate = TorchGate()
    background = Task("embed_all", "embedding all slices", gate=gate)
    assert background.priority > PRIORITY["predict"]
    seen = []

    def job(t):
        assert not t.outranked()
        click = threading.Thread(
            target=Task("predict", "preview", gate=gate).run, args=(seen.append,)
        )
        click.start()
        deadline = time.monotonic() + 10
        while not t.outranked():  # the click waits for the gate
            assert time.monotonic() < deadline
            time.sleep(0.01)
        t.progress(1, 2)  # gives way: the click runs now
        click.join(10)
        return len(seen)

    assert background.run(job) == (True, 1)
    assert not Task("embed_all", "x").outranked()  # no gate, nobody to give way to
