"""The model panel: which image, which model on which device, how intensities map to SAM's
input; and loading the model in a worker."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox, Container, FileEdit, FloatSpinBox, PushButton

from .._compat import avoid_triton_llvm_clash
from .._tasks import Task
from ..core.errors import NapariSamError
from ..core.normalize import DEFAULT_PERCENTILES, Normalization
from ..core.registry import DEFAULT_MODEL, MODELS
from .layer_menus import image_choices, selected
from .messages import report

if TYPE_CHECKING:  # pragma: no cover
    from napari.layers import Image

    from .sam_widget import SamWidget

CUSTOM = "custom"
#: Environment variable naming the model the widget starts with (e.g. ``vit_h``, ``tiny``).
ENV_MODEL = "NAPARI_SAM_MODEL"


def available_devices() -> list[str]:
    """Devices to offer. Only asks torch when it is already imported: importing it here
    would stall napari for seconds when the widget opens (the model loader imports it in a
    worker; a device that turns out to be unavailable is reported then)."""
    if "torch" not in sys.modules:
        return ["auto", "cpu", "cuda", "mps"]
    import torch

    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
        n = torch.cuda.device_count()
        if n > 1:
            devices += [f"cuda:{i}" for i in range(n)]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


def model_choices() -> tuple[list[tuple[str, str]], str]:
    """Model menu entries, grouped by domain with size and download state, and the default.

    The default is ``$NAPARI_SAM_MODEL`` when it names a registered model, else the first
    general-purpose model already downloaded, else the registry's default (downloaded on first
    use).
    """
    from ..core.downloads import list_models
    from ..core.registry import format_size, models_by_domain

    statuses = {s.spec.name: s for s in list_models()}
    choices = []
    default = None
    for domain, specs in models_by_domain(s.spec for s in statuses.values()).items():
        for spec in specs:
            size = format_size(spec.size_bytes)
            if spec.url is None:
                state = "bundled test model, not a real SAM"
            elif statuses[spec.name].cached:
                state = f"{size}, downloaded"
                if default is None and domain == "general":
                    default = spec.name
            else:
                state = f"{size}, downloads on first use"
            choices.append((f"{domain} · {spec.name} ({state})", spec.name))
    choices.append(("custom checkpoint file…", CUSTOM))
    wanted = os.environ.get(ENV_MODEL, "")
    if wanted in MODELS:
        default = wanted
    return choices, default or DEFAULT_MODEL


class ModelPanel(Container):
    """Image, model, checkpoint, device and intensity controls, and the loaded engine.

    The engine is loaded in a worker when the plane needs it (:meth:`ensure_model`); when it
    arrives, ``host.on_model_ready()`` carries on.
    """

    def __init__(self, host: SamWidget, engine: Any = None) -> None:
        self._host = host
        models, default_model = model_choices()
        self.image = ComboBox(
            label="image", choices=lambda _w: image_choices(host.viewer), tooltip="The image."
        )
        self.model = ComboBox(
            label="model",
            choices=models,
            value=default_model,
            tooltip="\n".join(f"{n}: {s.summary}" for n, s in MODELS.items())
            + "\ncustom: a SAM or MobileSAM checkpoint file (or napari-sam format)",
        )
        self.checkpoint = FileEdit(
            label="checkpoint", mode="r", filter="*.pth *.pt *.bin", visible=False
        )
        self.device = ComboBox(
            label="device",
            choices=available_devices(),
            value="auto",
            tooltip="auto: CUDA when available, else CPU. An unavailable device is reported "
            "when the model loads.",
        )
        self.normalization = ComboBox(
            label="intensities",
            choices=[
                ("contrast limits (as displayed)", "contrast_limits"),
                ("percentiles", "percentile"),
            ],
            tooltip="How the image is mapped to SAM's 8-bit RGB input. Contrast limits: what "
            "you see is what SAM sees. Percentiles: robust to outliers, ignores the display.",
        )
        lo, hi = DEFAULT_PERCENTILES
        self.percentile_low = FloatSpinBox(label="low %", value=lo, min=0, max=100, step=0.1)
        self.percentile_high = FloatSpinBox(label="high %", value=hi, min=0, max=100, step=0.1)
        self.percentiles = Container(
            widgets=[self.percentile_low, self.percentile_high],
            layout="horizontal",
            visible=False,
            label="percentiles",
        )
        # Shown when a checkpoint could not be had: where to put the file by hand.
        self.open_folder = PushButton(text="open cache folder", visible=False)
        self.copy_folder = PushButton(text="copy its path", visible=False)
        self.folder_help = Container(
            widgets=[self.open_folder, self.copy_folder],
            layout="horizontal",
            labels=False,
            visible=False,
        )
        self._folder: str | None = None
        super().__init__(
            widgets=[
                self.image,
                self.model,
                self.checkpoint,
                self.folder_help,
                self.device,
                self.normalization,
                self.percentiles,
            ]
        )
        self.engine: Any = None
        self.engine_key: tuple | None = None
        self._injected: tuple | None = None
        self.failed_key: tuple | None = None
        if engine is not None:
            self.set_engine(engine)
        self.model.changed.connect(self._on_model_changed)
        self.checkpoint.changed.connect(self._on_model_changed)
        self.device.changed.connect(self._on_model_changed)
        self.open_folder.clicked.connect(self._open_folder)
        self.copy_folder.clicked.connect(self._copy_folder)

    # -- choices --

    def image_layer(self) -> Image | None:
        """The image being segmented (None when there is none)."""
        return selected(self.image)

    def normalization_settings(self, image: Image | None = None) -> Normalization:
        """The intensity mapping chosen in the widget, for ``image``."""
        image = image or self.image_layer()
        if self.normalization.value == "contrast_limits" and image is not None:
            return Normalization(
                method="contrast_limits", contrast_limits=tuple(image.contrast_limits)
            )
        low, high = self.percentile_low.value, self.percentile_high.value
        return Normalization(method="percentile", percentiles=(low, high))

    def model_key(self) -> tuple | None:
        """(model name, checkpoint path, device) as chosen; None while no file is chosen."""
        if self._injected is not None:
            return self._injected
        device = self.device.value
        if self.model.value == CUSTOM:
            path = self.checkpoint.value
            if not path or not Path(path).is_file():
                return None
            return ("auto", str(Path(path).expanduser().resolve()), device)
        return (self.model.value, None, device)

    def _on_model_changed(self, *_: Any) -> None:
        self.checkpoint.visible = self.model.value == CUSTOM
        self._injected = None
        self.failed_key = None
        self._show_folder(None)
        self._host.on_settings_changed(now=True)

    @property
    def injected(self) -> bool:
        """Whether the engine was handed in (:meth:`set_engine`) rather than loaded here."""
        return self._injected is not None

    def set_engine(self, engine: Any) -> None:
        """Use an already loaded engine until the model or device control changes."""
        self._injected = ("injected", id(engine), str(engine.model.device))
        self.engine = engine
        self.engine_key = self._injected

    # -- loading --

    def ensure_model(self, *, force: bool = False) -> bool:
        """True when the chosen model is loaded; otherwise start loading it (in a worker)."""
        key = self.model_key()
        if key is None:
            self._host.set_status("Choose a checkpoint file for the custom model.")
            return False
        if self.engine is not None and self.engine_key == key:
            return True
        if key == self.failed_key and not force:
            return False
        running = self._host.runner.current("model")
        if running is not None and running.key == key:
            return False
        name, checkpoint, device = key
        label = f"loading model {Path(checkpoint).name if checkpoint else name}"
        self._host.set_status(f"{label.capitalize()}…")
        self._show_folder(None)
        store = self._host.cache_panel.store()  # embeddings on disk, unless turned off

        def job(task: Task) -> Any:
            from ..core.checkpoints import load_model
            from ..core.engine import SamEngine

            avoid_triton_llvm_clash()  # segment-anything imports torchvision
            model = load_model(
                name,
                checkpoint=checkpoint,
                device=device,
                progress=task.progress,
                cancel=task.is_cancelled,
            )
            task.check("wrapping the model")
            return SamEngine(model, store=store)

        self._host.runner.start("model", label, job, self._loaded, key=key)
        return False

    def _loaded(self, task: Task, engine: Any, error: BaseException | None) -> None:
        if task.key != self.model_key():
            return  # another model was chosen meanwhile
        if error is not None:
            self.failed_key = task.key
            self._host.set_status(report(error, "the model could not be loaded"))
            if isinstance(error, NapariSamError):
                self._show_folder(error.folder)
            self._host.on_model_failed()
            return
        self.engine = engine
        self.engine_key = task.key
        self._host.on_model_ready()

    # -- where to put a checkpoint by hand --

    def _show_folder(self, folder: str | None) -> None:
        self._folder = folder
        shown = folder is not None
        self.folder_help.visible = shown
        self.open_folder.visible = self.copy_folder.visible = shown
        if shown:
            tip = f"Put the checkpoint file into {folder}, then press Segment to load it."
            self.open_folder.tooltip = self.copy_folder.tooltip = tip

    def _open_folder(self) -> None:
        from qtpy.QtCore import QUrl
        from qtpy.QtGui import QDesktopServices

        if self._folder:
            Path(self._folder).mkdir(parents=True, exist_ok=True)
            QDesktopServices.openUrl(QUrl.fromLocalFile(self._folder))

    def _copy_folder(self) -> None:
        from qtpy.QtWidgets import QApplication

        if self._folder:
            QApplication.clipboard().setText(self._folder)
            self._host.set_status(f"Copied {self._folder} to the clipboard.")
