import json

import pytest
import torch

from diffusion.metrics.classifier import Classifier, ClassifierConfig

NAMES = ["cat", "dog", "émeu"]  # a non-ASCII name checks the JSON round trip


def small(**overrides) -> ClassifierConfig:
    return ClassifierConfig(**({"in_channels": 1, "num_classes": 3, "width": 8, "feature_dim": 16} | overrides))


@pytest.mark.parametrize("size", [(28, 28), (32, 32), (8, 12)])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_logit_and_feature_shapes(size, in_channels):
    model = Classifier(small(in_channels=in_channels)).eval()
    x = torch.rand(2, in_channels, *size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        features, logits = model.features(x), model(x)
    assert features.shape == (2, 16) and logits.shape == (2, 3)
    assert features.dtype == logits.dtype == torch.float32
    assert torch.isfinite(features).all() and torch.isfinite(logits).all()
    with torch.no_grad():
        torch.testing.assert_close(logits, model.head(features), rtol=0, atol=0)  # logits are linear in features


def test_default_config_is_the_documented_one():
    config = ClassifierConfig()
    assert (config.in_channels, config.num_classes, config.width, config.feature_dim) == (1, 10, 32, 128)
    model = Classifier(config)

    def conv(c_in: int, c_out: int) -> int:
        return 9 * c_in * c_out + c_out + 2 * c_out  # 3x3 kernel and bias, then GroupNorm's weight and bias

    def linear(d_in: int, d_out: int) -> int:
        return d_in * d_out + d_out

    expected = conv(1, 32) + conv(32, 32) + conv(32, 64) + conv(64, 64) + conv(64, 128)
    expected += linear(128, 128) + linear(128, 10)
    assert sum(p.numel() for p in model.parameters()) == expected == 157_290
    assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = Classifier(small())
    x = torch.randn(4, 1, 12, 12)
    torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0])).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


def test_save_load_round_trip_gives_identical_logits_and_class_names(tmp_path):
    torch.manual_seed(0)
    model = Classifier(small(in_channels=3), NAMES).eval()
    model.save_pretrained(tmp_path / "c")
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["config.json", "model.safetensors"]
    data = json.loads((tmp_path / "c" / "config.json").read_text(encoding="utf-8"))
    assert data["_class_name"] == "Classifier" and data["class_names"] == NAMES and data["width"] == 8
    loaded = Classifier.from_pretrained(tmp_path / "c").eval()
    assert loaded.config == model.config and loaded.class_names == NAMES
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_unnamed_classes_round_trip_as_an_empty_list(tmp_path):
    Classifier(small()).save_pretrained(tmp_path / "c")
    assert Classifier.from_pretrained(tmp_path / "c").class_names == []


def test_missing_folder_or_files_are_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"classifier directory .*nowhere not found"):
        Classifier.from_pretrained(tmp_path / "nowhere")
    Classifier(small()).save_pretrained(tmp_path / "c")
    (tmp_path / "c" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model.safetensors not found"):
        Classifier.from_pretrained(tmp_path / "c")
    (tmp_path / "c" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config.json not found"):
        Classifier.from_pretrained(tmp_path / "c")


def test_foreign_or_mismatched_files_are_value_errors(tmp_path):
    Classifier(small(width=16)).save_pretrained(tmp_path / "c")
    config_path = tmp_path / "c" / "config.json"
    data = json.loads(config_path.read_text(encoding="utf-8"))
    config_path.write_text(json.dumps(data | {"_class_name": "UNet"}), encoding="utf-8")
    with pytest.raises(ValueError, match="is not a pixel-diffusion Classifier config"):
        Classifier.from_pretrained(tmp_path / "c")
    config_path.write_text(json.dumps(data | {"width": 8}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"weight stages.0.0.0.weight has shape \(16, 1, 3, 3\) but the config needs"):
        Classifier.from_pretrained(tmp_path / "c")
    config_path.write_text(json.dumps(data | {"class_names": ["only-one"]}), encoding="utf-8")
    with pytest.raises(ValueError, match="got 1 class_names for num_classes=3"):
        Classifier.from_pretrained(tmp_path / "c")
    (tmp_path / "c" / "model.safetensors").write_bytes(b"not a safetensors file")
    config_path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        Classifier.from_pretrained(tmp_path / "c")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"in_channels": 0}, r"in_channels must be a positive integer, got 0"),
        ({"num_classes": -1}, r"num_classes must be a positive integer, got -1"),
        ({"width": 2.5}, r"width must be a positive integer, got 2.5"),
        ({"feature_dim": True}, r"feature_dim must be a positive integer, got True"),
        ({"norm_groups": 3}, r"norm_groups=3 must divide width=8"),
    ],
)
def test_bad_config_values_name_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        small(**overrides)


def test_unknown_config_field_is_an_error():
    with pytest.raises(ValueError, match=r"unknown ClassifierConfig field\(s\) \['widht'\]"):
        ClassifierConfig.from_dict({"widht": 8})


@pytest.mark.parametrize(
    "shape, message",
    [
        ((2, 1, 28), r"images must have shape \(batch, channels, height, width\), got \(2, 1, 28\)"),
        ((2, 3, 28, 28), r"images have 3 channels but the classifier expects 1"),
        ((2, 1, 30, 28), r"image size 30x28 is not divisible by the classifier's downsampling factor 4"),
    ],
)
def test_bad_input_is_a_clear_error(shape, message):
    with pytest.raises(ValueError, match=message):
        Classifier(small())(torch.zeros(shape))


@pytest.mark.slow
def test_learns_a_trivial_two_class_task():
    """Bright squares on the left half vs the right half: 100% train accuracy in a few dozen steps."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(32) % 2
    images = torch.full((32, 1, 16, 16), -1.0)
    for i, label in enumerate(labels.tolist()):
        top, left = torch.randint(0, 12, (2,), generator=generator).tolist()
        left = left % 4 + (8 if label else 0)  # a 4x4 square inside the left or the right half
        images[i, 0, top : top + 4, left : left + 4] = 1.0
    torch.manual_seed(0)
    model = Classifier(small(num_classes=2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        assert (model(images).argmax(1) == labels).all()
