"""The local web app (``diffusion-app``, ``python -m diffusion.app``): generate, edit, interpolate and inspect
models in a browser, over `DiffusionPipeline`. Needs the app extra (Gradio): ``pip install 'pixel-diffusion[app]'``.

`actions` does the work without the page (and is what its tests call), `models` loads and describes the models,
`outbox` writes the files the page hands out, and `ui` builds the Gradio page.
"""

import importlib

from .actions import Limits, Result, Sampling
from .models import ModelShelf
from .outbox import Outbox


def __getattr__(name: str) -> object:
    """`build_app` and `launch` import Gradio: on first use, so that the rest works without it."""
    if name in ("build_app", "launch"):
        return getattr(importlib.import_module(".ui", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Limits", "ModelShelf", "Outbox", "Result", "Sampling", "build_app", "launch"]
