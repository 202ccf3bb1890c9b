"""The models the web app offers: its ``--model`` folders and the shipped models, each loaded on first use
and kept, per dtype, for the next requests."""

import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch

from ..arguments import DTYPES
from ..guidance import RANDOM_CLASSES
from ..io.model_folder import SHIPPED_MODELS
from ..pipeline import DiffusionPipeline

NO_CLASS = "none"  # the class choice that samples the unconditional model (the null class)


class ModelShelf:
    """Model names (a shipped model's name, or a path as given) -> loaded pipelines.

    The first of ``models`` is the default; the shipped models follow. At most ``keep`` pipelines stay
    loaded, the least recently used dropped first.
    """

    def __init__(self, models: Sequence[str] = (), device: torch.device | None = None, keep: int = 2) -> None:
        self.names = list(dict.fromkeys([*models, *SHIPPED_MODELS]))
        self.device = device or torch.device("cpu")
        self.keep = keep
        self._loaded: OrderedDict[tuple[str, str], DiffusionPipeline] = OrderedDict()
        self._lock = threading.Lock()  # Gradio calls from worker threads: one load of a model at a time

    @property
    def default(self) -> str:
        return self.names[0]

    def load(self, name: str, dtype: str = "fp32") -> DiffusionPipeline:
        """The pipeline of model ``name`` with its UNet in ``dtype`` (a key of `DTYPES`).

        Raises:
            ValueError: for a name this app does not offer, an unknown dtype, or a folder that is not a model.
            FileNotFoundError: for a model folder that is gone.
        """
        if name not in self.names:
            raise ValueError(f"unknown model {name!r}; choose one of {', '.join(self.names)}")
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
        key = (name, dtype)
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = DiffusionPipeline.from_pretrained(name, device=self.device, dtype=DTYPES[dtype])
                while len(self._loaded) > self.keep:
                    self._loaded.popitem(last=False)
            self._loaded.move_to_end(key)
            return self._loaded[key]

    def folder(self, name: str) -> Path:
        """Where model ``name`` is on disk."""
        return SHIPPED_MODELS.get(name, Path(name))


def class_choices(pipe: DiffusionPipeline) -> list[str]:
    """The class dropdown of ``pipe``: its class names (or ids), ``random`` and ``none``; only ``none`` for an
    unconditional model."""
    num_classes = pipe.unet.config.num_classes
    if num_classes is None:
        return [NO_CLASS]
    return [*(pipe.class_names or [str(i) for i in range(num_classes)]), RANDOM_CLASSES, NO_CLASS]


def default_class(pipe: DiffusionPipeline) -> str:
    """``random`` for a class-conditional model, else ``none``."""
    return RANDOM_CLASSES if pipe.unet.config.num_classes is not None else NO_CLASS


def describe(pipe: DiffusionPipeline, name: str, folder: Path) -> str:
    """The Model tab's summary of ``pipe``, in Markdown."""
    config = pipe.unet.config
    parameters = sum(p.numel() for p in pipe.unet.parameters())
    height, width = config.sample_size
    classes = ", ".join(pipe.class_names or map(str, range(config.num_classes or 0))) or "none (unconditional)"
    rows = [
        ("model", f"`{name}` (`{folder}`)"),
        ("parameters", f"{parameters:,}"),
        ("images", f"{height}x{width}, {config.in_channels} channel(s)"),
        ("background", f"{pipe.background} (what transparency was composited on in training)"),
        ("classes", classes),
        ("default sampler", f"`{pipe.scheduler_name()}`, {pipe.default_steps} steps"),
        ("dtype, device", f"{str(pipe.dtype).removeprefix('torch.')}, {pipe.device}"),
    ]
    if pipe.sampling is not None:
        rows.insert(-1, ("distilled", distillation(pipe)))
    return "| | |\n|---|---|\n" + "\n".join(f"| {key} | {value} |" for key, value in rows)


def distillation(pipe: DiffusionPipeline) -> str:
    """A distilled model's record in words: how it was made, its step counts and guidance range."""
    record = pipe.sampling
    steps = f"any step count (default {record.default_steps})" if record.any_steps else f"{record.steps_text()} steps"
    text = f"{record.method}: samples with {steps}"
    if record.guidance_range is not None:
        low, high = record.guidance_range
        text += f"; guidance scale {low:g} to {high:g}, in one pass"
    return text


def model_config(pipe: DiffusionPipeline) -> str:
    """The UNet's and the default sampler's configs (and a distilled model's record), as indented JSON."""
    configs = {"unet": pipe.unet.config.to_dict(), "scheduler": pipe.scheduler.config.to_dict()}
    configs |= {"sampling": pipe.sampling.to_dict()} if pipe.sampling is not None else {}
    return json.dumps(configs, indent=2, default=str)


def model_card(folder: Path) -> str:
    """The folder's README.md, or a line saying it has none."""
    card = folder / "README.md"
    return card.read_text(encoding="utf-8") if card.is_file() else f"`{folder}` has no model card (README.md)."
