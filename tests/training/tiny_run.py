"""The trainer tests' tiny run, written once: a tiny UNet, a folder of generated images, a short
`TrainConfig`, and the weights a run ends with."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from diffusion.io.checkpoint import list_checkpoints
from diffusion.training import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
TINY = {"base_channels": 16, "channel_mult": (1, 2), "norm_groups": 8, "attention_levels": (1,)}


def make_images(folder: Path, n: int = 8, size: tuple[int, int] = (20, 24)) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = folder / ("cats" if i % 2 else "dogs")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(sub / f"{i}.png")
    return folder


def config(tmp_path: Path, out: str = "out", **overrides) -> TrainConfig:
    base = dict(
        data=str(tmp_path / "data"),
        out=str(tmp_path / out),
        preset="tiny",
        channels=3,
        image_size=(8, 8),
        batch_size=4,
        warmup_steps=2,
        max_steps=4,
        checkpoint_every=2,
        keep_checkpoints=5,
        sample_every=0,
        log_every=1,
        ema_decay=0.9,
    )
    return TrainConfig(**(base | overrides))


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    _, path = list_checkpoints(out)[-1]
    return {
        **load_file(path / "model.safetensors"),
        **{f"ema.{k}": v for k, v in load_file(path / "ema.safetensors").items()},
    }


def cat_dog_images(folder: Path, n: int = 8) -> Path:
    """8x8 grayscale images in the class folders of `tiny_conditional_model` (cat, dog): a teacher's data."""
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = folder / ("dog" if i % 2 else "cat")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(sub / f"{i}.png")
    return folder


def distill_config(tmp_path: Path, teacher: Path, out: str = "out", **overrides) -> TrainConfig:
    """A six-step distillation of ``teacher`` on `cat_dog_images`, a checkpoint at every step."""
    base = dict(
        data=str(cat_dog_images(tmp_path / "data")),
        out=str(tmp_path / out),
        distill_from=str(teacher),
        batch_size=4,
        warmup_steps=0,
        max_steps=6,
        checkpoint_every=1,
        keep_checkpoints=10,
        sample_every=0,
        log_every=1,
        ema_decay=0.5,
        lr=1e-3,
    )
    return TrainConfig(**(base | overrides))
