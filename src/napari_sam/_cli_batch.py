"""Many images on the command line: ``napari-sam auto IMAGE [IMAGE ...] -o OUTDIR`` and
``napari-sam segment IMAGE [IMAGE ...] -o OUTDIR --prompts FILE`` (docs/batch.md).

Each image goes through exactly the code a single image does (``run_image``, from
:mod:`napari_sam.cli`), with its outputs named in OUTDIR by :mod:`napari_sam.core.batch`,
which also keeps the manifest that makes runs resumable. Images run one after the other in
this process, or as tasks on a ``dask.distributed`` cluster: a local one (``--workers N``:
worker processes on 127.0.0.1) or an existing one (``--dask-scheduler ADDRESS``). Tasks carry
paths, workers write the outputs themselves and send back a small summary; each worker
process loads the model once (:func:`_cached_engine`). dask is imported only for those runs.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._cli_common import EXIT_ERROR, EXIT_OK, _Input, _plural, known_error

RunImage = Callable[[argparse.Namespace, Callable[[], Any]], int]
MakeEngine = Callable[[argparse.Namespace], Any]

#: Options that say where things go or how the batch runs, not what an output holds.
_NOT_OPTIONS = frozenset(
    {
        "images", "image", "output", "table", "prompts", "workers", "dask_scheduler", "force",
        "embeddings", "no_embedding_cache", "model", "checkpoint", "skip_pickled_objects",
        "point", "box",
    }
)  # fmt: skip


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"--workers {text!r}: expected a whole number >= 1")
    return n


def add_batch_arguments(parser: argparse.ArgumentParser, *, prompts: bool) -> None:
    """``--prompts`` (segment only), ``--workers``, ``--dask-scheduler`` and ``--force``."""
    g = parser.add_argument_group("many images (batch: -o is a folder; see docs/batch.md)")
    if prompts:
        g.add_argument(
            "--prompts",
            type=Path,
            metavar="FILE",
            help="boxes and points of every image, CSV or JSON (docs/batch.md)",
        )
    g.add_argument(
        "--workers",
        type=_positive,
        metavar="N",
        help="run on a local Dask cluster of N worker processes (127.0.0.1)",
    )
    g.add_argument(
        "--dask-scheduler",
        metavar="ADDRESS",
        help="run on an existing dask.distributed cluster (e.g. tcp://host:8786; TLS from "
        "dask's config); workers must see the images and the output folder at the same paths",
    )
    g.add_argument(
        "--force",
        action="store_true",
        help="redo every image, even outputs that are up to date, and replace files no batch "
        "run wrote",
    )


def batch_mode(args: argparse.Namespace) -> bool:
    """Several images, a folder of images, --prompts, --workers, --dask-scheduler, or (auto)
    -o an existing folder: a batch. One image into a labels file is the single-image form
    (``segment IMAGE --box ... -o FOLDER`` stays an error: the prompts are for one image)."""
    from .core.batch import is_image_folder

    return (
        len(args.images) > 1
        or getattr(args, "prompts", None) is not None
        or args.workers is not None
        or args.dask_scheduler is not None
        or (args.command == "auto" and args.output.is_dir())
        or any(is_image_folder(p) for p in args.images)
    )


def check_prompt_form(args: argparse.Namespace, inp: _Input) -> None:
    """Prompts from a CSV file say whether they have a slice (z): the image must agree."""
    from .core.errors import PromptError

    volume = getattr(args, "prompt_volume", None)
    if volume is None or volume == inp.is_volume:
        return
    if volume:
        raise PromptError(
            f"{args.prompt_where}: these prompts have a z, but {inp.path} is a 2D image "
            f"({inp.describe()}); leave z empty"
        )
    raise PromptError(
        f"{args.prompt_where}: {inp.path} is a volume ({inp.describe()}); its prompts need "
        "a z (the slice)"
    )


# --------------------------------------------------------------------------------------------
# what runs on a worker (or in this process): one image, the model loaded once per process
# --------------------------------------------------------------------------------------------

#: How long to try to reach a scheduler given by --dask-scheduler.
_CONNECT_TIMEOUT = "20s"

_ENGINES: dict[str, Any] = {}
_ENGINE_LOCK = threading.Lock()
#: One image at a time per process: the output of an image is captured through sys.stdout,
#: which all threads share (a worker with several threads runs its images one by one).
_RUN_LOCK = threading.Lock()


@dataclass
class Job:
    """One image to run: its index in the batch, the per-image options, the model's key."""

    index: int
    image: str
    args: dict[str, Any]
    model_key: str


def _cached_engine(key: str, args: argparse.Namespace, make_engine: MakeEngine) -> Any:
    """This process's engine for the model ``key``, loaded on first use (one model kept).

    A model that fails to load (a damaged checkpoint, an unavailable device) is tried once:
    the next images fail with the same error at once.
    """
    with _ENGINE_LOCK:
        if key not in _ENGINES:
            _ENGINES.clear()  # another model: let the old one go first
            try:
                _ENGINES[key] = make_engine(args)
            except Exception as exc:
                _ENGINES[key] = exc
        if isinstance(_ENGINES[key], Exception):
            raise _ENGINES[key]
        return _ENGINES[key]


def _count_objects(path: Path) -> int:
    import numpy as np

    from .core.volume_io import read_volume

    values = np.unique(read_volume(path).data)
    return int(np.count_nonzero(values))


def run_job(job: Job, run_image: RunImage, make_engine: MakeEngine) -> dict[str, Any]:
    """Run one image (in a worker or here) and return its small summary; never raises for a
    problem with the image (the summary holds the error), only on interruption."""
    args = argparse.Namespace(**job.args)
    log = io.StringIO()
    engine: list[Any] = []
    load_seconds = [0.0]

    def engine_for() -> Any:
        t0 = time.perf_counter()
        engine.append(_cached_engine(job.model_key, args, make_engine))
        load_seconds[0] = time.perf_counter() - t0
        return engine[-1]

    result: dict[str, Any] = {"index": job.index, "status": "done", "error": "", "objects": None}
    with _RUN_LOCK:
        t0 = time.perf_counter()
        try:
            with redirect_stdout(log), redirect_stderr(log):
                run_image(args, engine_for)
            result["objects"] = _count_objects(args.output)
        except Exception as exc:
            message = known_error(exc)
            if message is None:  # a bug: keep what a report needs
                message = f"unexpected {type(exc).__name__}: {exc}; please report it"
                result["traceback"] = traceback.format_exc()
            result.update(status="failed", error=" ".join(message.split()))
        result["seconds"] = time.perf_counter() - t0 - load_seconds[0]
    lines = log.getvalue().replace("\r", "\n").splitlines()
    result["notes"] = [line for line in lines if line.startswith("note:")]
    result["model_id"] = engine[-1].model_id if engine else None
    result["process"] = f"{socket.gethostname()} pid {os.getpid()}"  # which worker made it
    return result


def _run_serial(jobs: Sequence[Job], run_image: RunImage, make_engine: MakeEngine, done) -> None:
    try:
        for job in jobs:
            done(job, run_job(job, run_image, make_engine))
    finally:
        _ENGINES.clear()  # this process goes on (tests, scripts): free the model


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


@contextmanager
def _dask_client(args: argparse.Namespace, n_jobs: int) -> Iterator[Any]:
    """A client of the cluster asked for: a local one started here, or the existing one."""
    from .core.errors import NapariSamError, short_reason

    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise NapariSamError(
            "--workers and --dask-scheduler need dask.distributed: pip install 'dask[distributed]'"
        ) from None
    if args.dask_scheduler is not None:
        try:  # Client reads dask's config, TLS ("distributed.comm.tls") included
            client = Client(args.dask_scheduler, timeout=_CONNECT_TIMEOUT)
        except (OSError, ValueError) as exc:
            raise NapariSamError(
                f"cannot connect to the Dask scheduler at {args.dask_scheduler}: "
                f"{short_reason(exc)}"
            ) from None
        with client:
            _note_slow_workers(client)
            yield client
        return
    import logging

    import dask

    from .core.device import ENV_THREADS

    n = min(args.workers, n_jobs)
    # N workers share the cores: torch in each gets its part (unless the user chose).
    threads = os.environ.get(ENV_THREADS, "").strip() or str(max(1, _cores() // n))
    env = {ENV_THREADS: threads, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    with (
        # Dask's nanny sets MALLOC_TRIM_THRESHOLD_ in every worker process it spawns, which
        # turns off glibc's adaptive mmap threshold: each of torch's large temporary buffers
        # is then mapped and unmapped again, and the encoder ran 1.6x slower (measured; see
        # docs/batch.md). The workers we start run without it.
        _without_malloc_trim(dask),
        LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            memory_limit=0,  # no per-worker share of RAM: a model alone may exceed it
            silence_logs=logging.CRITICAL,  # workers' complaints as the cluster stops
            env=env,
        ) as cluster,
        Client(cluster) as client,
    ):
        _note_slow_workers(client)
        yield client


#: glibc's variable that Dask's nanny sets in its worker processes (see :func:`_dask_client`).
_MALLOC_TRIM = "MALLOC_TRIM_THRESHOLD_"


@contextmanager
def _without_malloc_trim(dask: Any) -> Iterator[None]:
    """Start worker processes without ``MALLOC_TRIM_THRESHOLD_``: unset in dask's config for
    them, and in this process's environment while they start (a nanny started earlier in
    this process left it there: it sets it here before spawning)."""
    saved = os.environ.pop(_MALLOC_TRIM, None)
    try:
        with dask.config.set({f"distributed.nanny.pre-spawn-environ.{_MALLOC_TRIM}": None}):
            yield
    finally:
        if saved is not None:
            os.environ[_MALLOC_TRIM] = saved


def _malloc_trim_setting() -> str | None:
    return os.environ.get(_MALLOC_TRIM)


def _note_slow_workers(client: Any) -> None:
    """Say once when workers run with ``MALLOC_TRIM_THRESHOLD_`` set (slow torch)."""
    try:
        settings = client.run(_malloc_trim_setting)
    except Exception:  # a worker that cannot answer is reported by the tasks themselves
        return
    slow = sorted({v for v in settings.values() if v is not None})
    if slow:
        n = sum(v is not None for v in settings.values())
        print(
            f"note: {n} of {len(settings)} Dask workers run with {_MALLOC_TRIM}="
            f"{', '.join(slow)} (Dask's default for the workers its nannies start), which "
            "makes torch about 1.6x slower; start them without it (docs/batch.md)",
            file=sys.stderr,
        )


def _run_dask(
    args: argparse.Namespace,
    jobs: Sequence[Job],
    run_image: RunImage,
    make_engine: MakeEngine,
    done,
) -> None:
    from .core.errors import short_reason

    with _dask_client(args, len(jobs)) as client:
        from distributed import as_completed

        futures = {
            client.submit(run_job, job, run_image, make_engine, pure=False): job for job in jobs
        }
        try:
            for future in as_completed(futures):
                job = futures[future]
                try:
                    result = future.result()
                except Exception as exc:  # the worker died (memory), or was lost
                    result = {
                        "index": job.index,
                        "status": "failed",
                        "error": f"the Dask task failed: {short_reason(exc)}",
                        "notes": [],
                    }
                done(job, result)
        finally:
            client.cancel(list(futures))


# --------------------------------------------------------------------------------------------
# the client side: plan, resume, progress, summary
# --------------------------------------------------------------------------------------------


@dataclass
class _Plan:
    folder: Path
    manifest: Any  # core.batch.Manifest
    items: list[Any]  # core.batch.BatchItem, in input order
    results: list[Any]  # core.batch.ImageResult, in input order
    jobs: list[Job] = field(default_factory=list)


def _check_args(args: argparse.Namespace) -> None:
    from .core.errors import NapariSamError

    if getattr(args, "table", None) is not None:
        raise NapariSamError(
            "--table names one file; a batch writes NAME_objects.csv for every image into the "
            "output folder"
        )
    if args.command == "segment":
        if args.prompts is None:
            raise NapariSamError(
                "segment with several images needs --prompts FILE (their boxes and points; "
                "see docs/batch.md); --box and --point are for one image"
            )
        if args.point or args.box:
            raise NapariSamError("give the prompts either in --prompts FILE or as --box/--point")
    if args.workers is not None and args.dask_scheduler is not None:
        raise NapariSamError("use either --workers N (a local cluster) or --dask-scheduler")


def _output_folder(out: Path) -> Path:
    from .core.errors import NapariSamError
    from .core.io import LABEL_SUFFIXES, file_suffix

    if out.exists() and not out.is_dir():
        raise NapariSamError(f"a batch writes into a folder, and -o {out} is a file")
    if not out.exists():
        if file_suffix(out) in LABEL_SUFFIXES:
            raise NapariSamError(
                f"a batch writes into a folder, not a labels file: -o {out} (give a folder)"
            )
        if not out.parent.is_dir():
            raise NapariSamError(f"cannot make the output folder {out}: {out.parent} is missing")
        out.mkdir()
    return out


def _json_plain(value: Any) -> Any:
    """``value`` as JSON gives it back (tuples become lists, paths strings): comparable with a
    manifest read from disk."""
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def _signature_base(args: argparse.Namespace) -> dict[str, Any]:
    from . import __version__
    from .core.batch import model_identity
    from .core.registry import DEFAULT_MODEL

    model = args.model or ("auto" if args.checkpoint else DEFAULT_MODEL)
    options = {k: v for k, v in vars(args).items() if k not in _NOT_OPTIONS}
    return _json_plain(
        {
            "model": model_identity(model, args.checkpoint),
            "options": options,
            "napari_sam": __version__,
        }
    )


def _image_args(args: argparse.Namespace, item: Any, folder: Path, prompts: Any) -> dict:
    """The options of one image's run: the single-image form's, with its outputs and prompts."""
    values = dict(vars(args))
    values.update(
        image=item.image,
        output=folder / item.labels,
        table=None if item.table is None else folder / item.table,
    )
    for name in ("checkpoint", "embeddings"):  # workers may run elsewhere (another cwd)
        if values.get(name) is not None:
            values[name] = Path(values[name]).absolute()
    if prompts is not None:
        values.update(
            point=prompts.points,
            box=prompts.boxes,
            prompt_volume=prompts.volume,
            prompt_where=prompts.where,
        )
    return values


def _note_extra_prompts(args: argparse.Namespace, prompts: dict, items: Sequence[Any]) -> None:
    """A note for prompts of images that are not in the batch (a typo, or a subset run)."""
    from .core.prompt_files import image_name

    names = {image_name(item.image) for item in items}
    extra = [name for name in prompts if name not in names]
    if extra:
        print(
            f"note: {args.prompts} has prompts for {_plural(len(extra), 'image')} not in this "
            f"batch: {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}",
            file=sys.stderr,
        )


def _plan(args: argparse.Namespace) -> _Plan:
    """Check everything that can be checked before the model loads, and decide per image:
    up to date (skipped), refused (a row with its error), or to run (a job)."""
    from .core.batch import ImageResult, Manifest, expand_inputs, input_identity, plan_outputs
    from .core.errors import NapariSamError
    from .core.prompt_files import image_name, read_prompt_file

    _check_args(args)
    prompts = read_prompt_file(args.prompts) if args.command == "segment" else {}
    base = _signature_base(args)  # an unknown model or unreadable checkpoint: before any file
    folder = _output_folder(args.output).resolve()
    inputs, notes = expand_inputs(args.images, folder)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if not inputs:
        raise NapariSamError(f"no images to run ({' '.join(map(str, args.images))})")
    # Absolute, not resolved: a link keeps its own name (outputs and prompts go by names).
    items = plan_outputs([p.absolute() for p in inputs], table=args.command == "auto")
    _note_extra_prompts(args, prompts, items)
    model_key = json.dumps([base["model"], args.device, args.precision, args.no_fast,
                            str(args.embeddings), args.no_embedding_cache])  # fmt: skip
    manifest = Manifest.load(folder, ignore_damaged=args.force)
    plan = _Plan(folder, manifest, items, [])
    for index, item in enumerate(items):
        row = ImageResult(item.image, item.labels, "failed")
        plan.results.append(row)
        mine = prompts.get(image_name(item.image)) if args.command == "segment" else None
        if args.command == "segment" and mine is None:
            row.error = f"no prompts for {image_name(item.image)} in {args.prompts}"
            continue
        try:
            identity = input_identity(item.image)
        except OSError as exc:
            row.error = f"cannot read image {item.image}: {exc.strerror or exc}"
            continue
        prompt_data = None if mine is None else mine.as_dict()
        signature = {**base, "input": str(item.image), "input_id": identity}
        signature = _json_plain({**signature, "prompts": prompt_data})
        if not args.force and manifest.up_to_date(item, signature):
            done = manifest.entries[item.labels].get("result", {})
            row.status, row.objects = "skipped", done.get("objects")
            continue
        foreign = [] if args.force else manifest.foreign_outputs(item)
        if foreign:
            row.error = (
                f"{folder / foreign[0]} exists and no batch run wrote it; move it away or use "
                "--force to replace it"
            )
            continue
        manifest.start(item, signature)
        row.status, row.error = "not run", "interrupted"  # until its result comes
        job_args = _image_args(args, item, folder, mine)
        plan.jobs.append(Job(index, str(item.image), job_args, model_key))
    return plan


class _Progress:
    """``images: k/n (f failed), elapsed, time left`` on one line of stderr."""

    def __init__(self, total: int, skipped: int) -> None:
        self.total, self.done, self.failed = total, 0, 0
        self.t0 = time.perf_counter()
        if skipped:
            print(f"{_plural(skipped, 'image')} up to date (skipped)", file=sys.stderr)
        self._draw()

    def _draw(self) -> None:
        if not self.total:
            return
        elapsed = time.perf_counter() - self.t0
        left = ""
        if 0 < self.done < self.total:
            left = f", ~{elapsed / self.done * (self.total - self.done):.0f} s left"
        failed = f" ({self.failed} failed)" if self.failed else ""
        line = f"images: {self.done}/{self.total}{failed}, {elapsed:.0f} s{left}"
        print(f"\r{line:<60}", end="", file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        print(f"\r{text:<60}", file=sys.stderr)
        self._draw()

    def update(self, failed: bool) -> None:
        self.done += 1
        self.failed += failed
        self._draw()

    def close(self) -> None:
        if self.total:
            print(file=sys.stderr)


def run_batch(args: argparse.Namespace, run_image: RunImage, make_engine: MakeEngine) -> int:
    """Run a batch (see the module); returns the exit status: 0 when no image failed."""
    from .core.batch import MANIFEST, SUMMARY, format_summary, write_summary

    plan = _plan(args)
    plan.manifest.save()  # the outputs about to be written are marked incomplete first
    skipped = sum(r.status == "skipped" for r in plan.results)
    progress = _Progress(len(plan.jobs), skipped)

    def done(job: Job, result: dict[str, Any]) -> None:
        row = plan.results[job.index]
        row.status, row.error = result["status"], result.get("error", "")
        row.objects, row.seconds = result.get("objects"), result.get("seconds")
        for note in result.get("notes", []):
            progress.note(f"{Path(job.image).name}: {note}")
        if "traceback" in result:
            progress.note(result["traceback"].rstrip())
        if row.status == "done":
            model_id = result.get("model_id")
            entry = {"objects": row.objects, "seconds": row.seconds, "model_id": model_id}
            entry["process"] = result.get("process")
            plan.manifest.finish(plan.items[job.index], entry)
            plan.manifest.save(at_most_every=1.0)
        progress.update(row.status == "failed")

    try:
        if plan.jobs and (args.workers is not None or args.dask_scheduler is not None):
            _run_dask(args, plan.jobs, run_image, make_engine, done)
        else:
            _run_serial(plan.jobs, run_image, make_engine, done)
    finally:  # also when interrupted: what finished is recorded, the rest says so
        progress.close()
        plan.manifest.save()
        write_summary(plan.folder / SUMMARY, plan.results)
    print(format_summary(plan.results))
    counts = {s: sum(r.status == s for r in plan.results) for s in ("done", "skipped", "failed")}
    print(
        f"wrote {plan.folder / SUMMARY} ({counts['done']} done, {counts['skipped']} skipped, "
        f"{counts['failed']} failed; what each output was made from: {MANIFEST})"
    )
    failed = [r for r in plan.results if r.status == "failed"]
    if failed:
        names = ", ".join(r.image.name for r in failed[:5]) + (" ..." if len(failed) > 5 else "")
        print(
            f"napari-sam: error: {len(failed)} of {_plural(len(plan.results), 'image')} failed "
            f"({names}); see {plan.folder / SUMMARY}",
            file=sys.stderr,
        )
        return EXIT_ERROR
    return EXIT_OK
