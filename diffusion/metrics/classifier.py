"""A small image classifier whose penultimate layer is the feature space of `diffusion.metrics`.

Fréchet Inception Distance (Heusel et al. 2017) measures generated images in the pool3 features of an
ImageNet Inception-v3. For 28x28 grayscale data such as Fashion-MNIST that network is a poor fit (and
a large download), so, as is common for MNIST-like data, we train this small CNN on the data itself
(bench/train_classifier.py) and measure in its ``features``.

Architecture: three resolution stages of 3x3 convolutions with GroupNorm and SiLU, 2x average
pooling between stages, global average pooling, a linear projection to ``feature_dim`` (the embedding
`features` returns), and a linear head to the logits. It takes any image whose sides are divisible by
4, in [-1, 1] like the diffusion models.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import config_from_dict, config_to_dict
from ..io.weights import load_checked, load_weights, read_model_config, save_model

DOWNSAMPLE_FACTOR = 4  # two 2x poolings between the three stages


@dataclass(kw_only=True)
class ClassifierConfig:
    """Everything needed to rebuild a `Classifier`; saved as ``config.json`` beside the weights."""

    in_channels: int = 1  # image channels: 1 grayscale, 3 RGB
    num_classes: int = 10  # logits per image
    width: int = 32  # channels of the first stage; the second has 2x, the third 4x
    feature_dim: int = 128  # width of the penultimate embedding returned by `Classifier.features`
    norm_groups: int = 8  # GroupNorm groups; must divide width (and so every stage's channels)

    def __post_init__(self) -> None:
        for name in ("in_channels", "num_classes", "width", "feature_dim", "norm_groups"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.width % self.norm_groups:
            raise ValueError(f"norm_groups={self.norm_groups} must divide width={self.width}")

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ClassifierConfig":
        return config_from_dict(cls, data)


class ConvBlock(nn.Sequential):
    """3x3 convolution (same padding), GroupNorm, SiLU: ``(b, c_in, h, w) -> (b, c_out, h, w)``."""

    def __init__(self, in_channels: int, out_channels: int, norm_groups: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.GroupNorm(norm_groups, out_channels),
            nn.SiLU(),
        )


class Classifier(nn.Module):
    """A small CNN classifier with a penultimate embedding for feature-space metrics.

    ``forward(x)`` maps images ``(b, in_channels, h, w)`` in [-1, 1] to logits ``(b, num_classes)``;
    ``features(x)`` gives the ``(b, feature_dim)`` embedding the logits are a linear function of.
    Any ``h`` and ``w`` divisible by 4 work.

    Args:
        config: the architecture.
        class_names: one name per class (the training folder's subfolder names), or empty when
            unnamed; saved in ``config.json`` beside the config.
    """

    def __init__(self, config: ClassifierConfig, class_names: list[str] | tuple[str, ...] = ()) -> None:
        super().__init__()
        class_names = list(class_names)
        if class_names and len(class_names) != config.num_classes:
            raise ValueError(f"got {len(class_names)} class_names for num_classes={config.num_classes}")
        if not all(isinstance(name, str) for name in class_names):
            raise ValueError(f"class_names must be strings, got {class_names!r}")
        self.config = config
        self.class_names = class_names
        c, w, g = config, config.width, config.norm_groups
        self.stages = nn.ModuleList(
            [
                nn.Sequential(ConvBlock(c.in_channels, w, g), ConvBlock(w, w, g)),  # at h x w
                nn.Sequential(ConvBlock(w, 2 * w, g), ConvBlock(2 * w, 2 * w, g)),  # at h/2 x w/2
                ConvBlock(2 * w, 4 * w, g),  # at h/4 x w/4
            ]
        )
        self.pool = nn.AvgPool2d(2)
        self.proj = nn.Linear(4 * w, c.feature_dim)
        self.head = nn.Linear(c.feature_dim, c.num_classes)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` for an input this model cannot take, naming what was expected."""
        if x.ndim != 4:
            raise ValueError(f"images must have shape (batch, channels, height, width), got {tuple(x.shape)}")
        if x.shape[1] != self.config.in_channels:
            raise ValueError(f"images have {x.shape[1]} channels but the classifier expects {self.config.in_channels}")
        height, width = x.shape[-2:]
        if height % DOWNSAMPLE_FACTOR or width % DOWNSAMPLE_FACTOR:
            raise ValueError(
                f"image size {height}x{width} is not divisible by the classifier's downsampling factor "
                f"{DOWNSAMPLE_FACTOR}; use sides that are multiples of {DOWNSAMPLE_FACTOR}"
            )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate embedding ``(b, feature_dim)``, in the model's dtype, of images
        ``(b, in_channels, h, w)`` in [-1, 1] with h and w divisible by 4."""
        self.check_input(x)
        h = x
        for i, stage in enumerate(self.stages):
            h = stage(self.pool(h) if i else h)  # (b, w * 2**i, h / 2**i, w / 2**i)
        h = h.mean(dim=(2, 3))  # global average pooling: (b, 4 * width)
        return nn.functional.silu(self.proj(h))  # (b, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(b, num_classes)`` for images ``(b, in_channels, h, w)`` in [-1, 1]."""
        return self.head(self.features(x))

    # ----- persistence: config.json + model.safetensors, no pickle -----

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``config.json`` (with ``class_names``) and ``model.safetensors`` atomically into ``directory``."""
        save_model(self, directory, "Classifier", {"class_names": self.class_names, **self.config.to_dict()})

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "Classifier":
        """Load a model written by `save_pretrained`; never executes code from the files.

        Raises:
            FileNotFoundError: the folder, its ``config.json`` or its ``model.safetensors`` is missing.
            ValueError: the files are not a classifier, or the weights do not match the config.
        """
        fields = read_model_config(directory, "Classifier", "classifier")
        class_names = fields.pop("class_names", [])
        if not isinstance(class_names, list):
            raise ValueError(f"{Path(directory) / 'config.json'}: class_names must be a list, got {class_names!r}")
        model = cls(ClassifierConfig.from_dict(fields), class_names)
        load_weights(model, directory, "classifier")
        return model

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Load a state dict, refusing missing, unexpected or wrongly shaped tensors by name."""
        load_checked(self, state, "classifier")
