"""Fixtures shared by the tests: tiny pipelines and their model folders, a tiny classifier, and folders of
images.

The pipelines are built once per session at torch seed 0. A test gets its own copy of an in-memory
pipeline (`tiny_pipeline`, `tiny_conditional_pipeline`), so that it may change its scheduler or device;
the model folders are shared and must not be written into.
"""

import copy
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# Hugging Face datasets: never the network, and a cache of this session's own (set before datasets is imported).
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="hf-datasets-"))

from diffusion.metrics.classifier import Classifier, ClassifierConfig
from diffusion.models import UNet, UNetConfig
from diffusion.pipeline import DiffusionPipeline
from diffusion.schedulers import DDIMScheduler, Scheduler

# The tiny UNet: 1-channel 8x8, two levels of 16 and 32 channels with one residual block each, no attention.
TINY_UNET = {
    "in_channels": 1,
    "sample_size": (8, 8),
    "base_channels": 16,
    "channel_mult": (1, 2),
    "num_res_blocks": 1,
    "attention_levels": (),
    "norm_groups": 8,
}
CLASS_NAMES = ("cat", "dog")  # of the tiny class-conditional model


def tiny(class_names: Sequence[str] = (), scheduler: Scheduler | None = None, **unet: object) -> DiffusionPipeline:
    """A tiny pipeline at torch seed 0: `TINY_UNET` with ``unet``'s changes, one class per class name."""
    torch.manual_seed(0)
    config = UNetConfig(**TINY_UNET | {"num_classes": len(class_names) or None} | unet)
    return DiffusionPipeline(UNet(config), scheduler or DDIMScheduler(), list(class_names))


@pytest.fixture(scope="session")
def make_tiny_pipeline():
    """`tiny`: a new tiny pipeline for each call, for a test that needs a variant (``tiny(scheduler=...,
    attention_levels=(1,))``) or several."""
    return tiny


@pytest.fixture(scope="session")
def _tiny_unconditional() -> DiffusionPipeline:
    return tiny()


@pytest.fixture(scope="session")
def _tiny_conditional() -> DiffusionPipeline:
    return tiny(CLASS_NAMES)


@pytest.fixture
def tiny_pipeline(_tiny_unconditional) -> DiffusionPipeline:
    """The unconditional 1-channel 8x8 pipeline with DDIM (the one in `tiny_model`); the test's own copy."""
    return copy.deepcopy(_tiny_unconditional)


@pytest.fixture
def tiny_conditional_pipeline(_tiny_conditional) -> DiffusionPipeline:
    """The class-conditional one (classes cat, dog; the one in `tiny_conditional_model`); the test's own copy."""
    return copy.deepcopy(_tiny_conditional)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, _tiny_unconditional) -> Path:
    """The model folder of `tiny_pipeline`."""
    path = tmp_path_factory.mktemp("tiny-model") / "model"
    _tiny_unconditional.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_conditional_model(tmp_path_factory, _tiny_conditional) -> Path:
    """The model folder of `tiny_conditional_pipeline`."""
    path = tmp_path_factory.mktemp("tiny-conditional") / "model"
    _tiny_conditional.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_rgb_model(tmp_path_factory) -> Path:
    """An unconditional 3-channel 8x16 (height x width) model folder: images of two sizes in one."""
    path = tmp_path_factory.mktemp("tiny-rgb") / "model"
    tiny(in_channels=3, sample_size=(8, 16)).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory) -> Path:
    """A randomly initialised 1-channel classifier folder with 16-d features."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("tiny-classifier") / "classifier"
    Classifier(ClassifierConfig(in_channels=1, width=8, feature_dim=16, norm_groups=4)).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_image_folder(tmp_path_factory) -> Path:
    """Four random 8x8 RGB PNGs in two class folders (a/0.png, b/1.png, a/2.png, b/3.png): training data."""
    root = tmp_path_factory.mktemp("tiny-images") / "data"
    rng = np.random.default_rng(0)
    for i in range(4):
        path = root / "ab"[i % 2] / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
    return root


@pytest.fixture(scope="session")
def reference_folder(tmp_path_factory) -> Path:
    """12 random RGB 12x10 PNGs in two class subfolders (a/0.png ... a/5.png, b/6.png ... b/11.png)."""
    root = tmp_path_factory.mktemp("reference") / "real"
    rng = np.random.default_rng(0)
    for i in range(12):
        path = root / ("a" if i < 6 else "b") / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(path)
    return root


@pytest.fixture(scope="module")
def tmp_cwd(tmp_path_factory) -> Iterator[Path]:
    """A temporary working folder for a module's tests, so that relative paths stay out of the repository."""
    path = tmp_path_factory.mktemp("cwd")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(path)
        yield path
