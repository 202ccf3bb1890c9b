"""Fixtures shared by the evaluation tests: a tiny model, a tiny classifier, and a folder of real images."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion.metrics.classifier import Classifier, ClassifierConfig
from diffusion.models import UNet, UNetConfig
from diffusion.pipeline import DiffusionPipeline
from diffusion.schedulers import DDIMScheduler


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A randomly initialised 1-channel 8x8 model folder."""
    torch.manual_seed(0)
    config = UNetConfig(
        in_channels=1,
        sample_size=(8, 8),
        base_channels=16,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_levels=(),
        norm_groups=8,
    )
    path = tmp_path_factory.mktemp("tiny-model") / "model"
    DiffusionPipeline(UNet(config), DDIMScheduler()).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory) -> Path:
    """A randomly initialised 1-channel classifier folder with 16-d features."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("tiny-classifier") / "classifier"
    Classifier(ClassifierConfig(in_channels=1, width=8, feature_dim=16, norm_groups=4)).save_pretrained(path)
    return path


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
