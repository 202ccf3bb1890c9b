"""The pure helpers of bench/noto_emoji_quality.py and the --test split of bench/train_classifier.py."""

import argparse
import importlib.util
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion.metrics.memorization import memorization_report

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


quality = _load("noto_emoji_quality")
train_classifier = _load("train_classifier")


@pytest.mark.parametrize(("num_images", "sizes"), [(90, {10}), (1000, {111, 112}), (5, {0, 1})])
def test_class_labels_come_in_class_order_in_near_equal_blocks(num_images, sizes):
    labels = quality.class_labels(num_images, 9)
    assert len(labels) == num_images and labels == sorted(labels)
    assert {Counter(labels)[c] for c in range(9)} == sizes


@pytest.mark.parametrize(("text", "value"), [("default", None), ("0", 0.0), ("1.5", 1.5)])
def test_parse_guidance(text, value):
    assert quality.parse_guidance(text) == value


@pytest.mark.parametrize("text", ["-1", "strong", "nan"])
def test_parse_guidance_refuses_what_is_not_a_scale(text):
    with pytest.raises(argparse.ArgumentTypeError, match=f"expected 'default' or a guidance scale >= 0, got '{text}'"):
        quality.parse_guidance(text)


def test_write_card_replaces_only_the_quality_section(tmp_path):
    card = tmp_path / "README.md"
    card.write_text("# Card\n<!-- quality -->\nold tables\n<!-- /quality -->\n## After\n")
    quality.write_card(card, "| new | table |")
    assert card.read_text() == "# Card\n<!-- quality -->\n| new | table |\n<!-- /quality -->\n## After\n"


def test_a_card_without_markers_or_missing_is_refused_in_one_line(tmp_path):
    card = tmp_path / "README.md"
    card.write_text("# Card\n")
    with pytest.raises(SystemExit, match=re.escape("has no <!-- quality --> ... <!-- /quality --> markers")):
        quality.read_card(card)
    with pytest.raises(SystemExit, match=r"--write-card .*missing.md not found"):
        quality.read_card(tmp_path / "missing.md")


def test_cached_makes_once_and_then_loads(tmp_path):
    calls = []

    def make():
        calls.append(1)
        return {"x": torch.arange(3)}

    first, second = quality.cached(tmp_path / "a.pt", make), quality.cached(tmp_path / "a.pt", make)
    assert calls == [1] and torch.equal(first["x"], second["x"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]  # no temporary file left


def test_save_pairs_writes_the_pairs_side_by_side_upscaled(tmp_path):
    generator = torch.Generator().manual_seed(0)
    samples, train = torch.rand(10, 3, 4, 4, generator=generator), torch.rand(12, 3, 4, 4, generator=generator)
    train[5] = samples[2]  # an exact copy: the closest pair
    report = memorization_report(samples.flatten(1), train.flatten(1), train[:3].flatten(1), num_pairs=8)
    quality.save_pairs(report, samples, train, tmp_path / "pairs.png")
    image = Image.open(tmp_path / "pairs.png")
    # 8 tiles of (4 + 1 + 4) x 4 pixels, x3, four per row with 6 pixels of padding: 4 * (27 + 6) + 6, 2 * (12 + 6) + 6
    assert (image.mode, image.size) == ("RGB", (138, 42))
    first = np.asarray(image)[6 : 6 + 12, 6 : 6 + 27]  # the first tile: sample 2 left, training image 5 right
    assert report.closest[0][:2] == (2, 5)
    assert np.array_equal(first[:, :12], first[:, 15:])
    assert (first[:, 12:15] == 128).all()  # the grey line between them (0.5 rounds to 128)


def _folder(root: Path, classes: dict[str, int]) -> Path:
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGBA", (8, 8), (i * 40, 0, 0, 255)).save(root / name / f"{i}.png")
    return root


def _args(**overrides) -> argparse.Namespace:
    settings = {"test": None, "holdout_every": 10, "limit": None, "image_size": 4, "channels": 3} | overrides
    return argparse.Namespace(**settings)


def test_train_classifier_holds_out_the_test_folder_when_given(tmp_path):
    data = train_classifier.labelled_folder(_folder(tmp_path / "train", {"a": 3, "b": 4}), 4, 3)
    test = _folder(tmp_path / "test", {"a": 1, "b": 2})
    train_x, train_y, held_x, held_y = train_classifier.split(data, _args(test=test), torch.Generator())
    assert train_x.shape == (7, 3, 4, 4) and train_y.tolist() == [0, 0, 0, 1, 1, 1, 1]  # all of --data
    assert held_x.shape == (3, 3, 4, 4) and held_y.tolist() == [0, 1, 1]


def test_train_classifier_refuses_a_test_folder_of_other_classes(tmp_path):
    data = train_classifier.labelled_folder(_folder(tmp_path / "train", {"a": 3, "b": 4}), 4, 3)
    test = _folder(tmp_path / "test", {"a": 1, "c": 2})
    with pytest.raises(SystemExit, match=r"--test .* has classes \['a', 'c'\], --data \['a', 'b'\]"):
        train_classifier.split(data, _args(test=test), torch.Generator())


def test_train_classifier_holds_out_every_nth_image_without_a_test_folder(tmp_path):
    data = train_classifier.labelled_folder(_folder(tmp_path / "train", {"a": 3, "b": 4}), 4, 3)
    train_x, _, held_x, held_y = train_classifier.split(data, _args(holdout_every=3), torch.Generator())
    assert (len(train_x), len(held_x), held_y.tolist()) == (4, 3, [0, 1, 1])  # items 0, 3, 6 of a0 a1 a2 b0 b1 b2 b3


def test_flipped_mirrors_a_seeded_half():
    images = torch.arange(2 * 16, dtype=torch.float32).reshape(16, 1, 1, 2)  # 16 images of 1x2 pixels
    out = train_classifier.flipped(images, torch.Generator().manual_seed(0))
    mirrored = (out == images.flip(-1)).flatten(1).all(1)
    assert torch.equal(mirrored | (out == images).flatten(1).all(1), torch.ones(16, dtype=torch.bool))
    expected = torch.rand(16, generator=torch.Generator().manual_seed(0)) < 0.5  # the draw flipped() makes
    assert torch.equal(mirrored, expected)
