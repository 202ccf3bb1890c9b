"""The pure helpers of bench/noto_emoji_quality.py and the --test split of bench/train_classifier.py."""

import argparse
import importlib.util
import json
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


@pytest.mark.parametrize(
    ("num_images", "counts", "sizes"),
    [
        (90, [1] * 9, [10] * 9),
        (1000, [8, 16, 27, 13, 26, 224, 17, 22, 22], [21, 43, 72, 35, 69, 597, 45, 59, 59]),  # the Noto test split
        (5, [1, 1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0, 0, 0]),  # ties go to the first classes
        (4, [3, 1], [3, 1]),
        (3, [1, 0, 2], [1, 0, 2]),
    ],
)
def test_class_labels_follow_the_counts_in_class_order(num_images, counts, sizes):
    labels = quality.class_labels(num_images, counts)
    assert len(labels) == num_images and labels == sorted(labels)
    assert [Counter(labels)[c] for c in range(len(counts))] == sizes


@pytest.mark.parametrize(
    ("name", "group"),
    [
        ("1f44b.png", "1f44b"),
        ("People & Body/1f44b-1f3fd.png", "1f44b"),
        ("1f3c3-1f3fb-200d-2640-fe0f.png", "1f3c3-200d-2640"),
        ("1f574-fe0f.png", "1f574"),  # its variations drop the fe0f: 1f574-1f3fb.png
        ("1f574-1f3fb.png", "1f574"),
        ("1f1e6-1f1e8.png", "1f1e6-1f1e8"),
    ],
)
def test_emoji_group_by_name_drops_skin_tones_and_variation_selectors(name, group):
    assert quality.emoji_group(name, {}) == group


def test_emoji_group_takes_split_json_groups_first():
    groups = {"1f9d1-1f3fb-200d-2764-fe0f-200d-1f48b-200d-1f9d1-1f3fc.png": "1f48f.png"}  # a couple's variation
    assert quality.emoji_group("People & Body/1f9d1-1f3fb-200d-2764-fe0f-200d-1f48b-200d-1f9d1-1f3fc.png", groups) == (
        "1f48f.png"
    )
    assert quality.emoji_group("1f44b-1f3fd.png", groups) == "1f44b"  # not in groups: by name


def test_halves_by_group_keeps_an_emoji_and_its_skin_tones_in_one_half():
    names = ["a.png", "a-1f3fb.png", "a-1f3ff.png", "b.png", "c.png", "x-y.png", "d.png", "e.png"]
    groups = {"x-y.png": "c.png"}  # named otherwise, grouped by split.json
    first, second = quality.halves_by_group(names, 0, groups)
    assert sorted(first.tolist() + second.tolist()) == list(range(8))  # every image once
    halves = [{quality.emoji_group(names[i], groups) for i in half.tolist()} for half in (first, second)]
    assert not halves[0] & halves[1]  # no emoji in both
    assert len(first) >= 4 and len(second) >= 1  # groups fill the first half to at least half the images
    assert torch.equal(first, quality.halves_by_group(names, 0, groups)[0])  # seeded


def test_read_groups_reads_split_json_or_gives_none(tmp_path):
    assert quality.read_groups(tmp_path) == {}
    (tmp_path / "split.json").write_text(json.dumps({"seed": 0, "test": {}}))  # prepared before groups
    assert quality.read_groups(tmp_path) == {}
    (tmp_path / "split.json").write_text(json.dumps({"groups": {"a-1f3fb.png": "a.png"}}))
    assert quality.read_groups(tmp_path) == {"a-1f3fb.png": "a.png"}


def test_agreement_table_gives_all_image_and_balanced_ratios():
    samples, test = {0: 1.0, 1: 0.5}, {0: 1.0, 1: 1.0}
    sample_labels, test_labels = torch.tensor([0, 0, 0, 1]), torch.tensor([0, 1])
    table = quality.agreement_table(samples, test, sample_labels, test_labels, ["cat", "dog"])
    assert "| samples (the requested class) | 0.875 | 0.750 |" in table  # (3 * 1 + 0.5) / 4; (1 + 0.5) / 2
    assert "| agreement / ceiling | 0.875 | 0.750 |" in table
    assert "| dog | 50.0% | 100.0% | 0.50 |" in table


def test_agreement_table_is_nan_where_a_class_has_no_sample_or_the_ceiling_is_zero():
    samples, test = {0: 1.0}, {0: 0.0, 1: 1.0}  # class 1 drew no sample; the classifier never names class 0
    table = quality.agreement_table(samples, test, torch.tensor([0, 0]), torch.tensor([0, 1]), ["cat", "dog"])
    assert "| samples (the requested class) | 1.000 | nan |" in table
    assert "| cat | 100.0% | 0.0% | nan |" in table and "| dog | nan% | 100.0% | nan |" in table


def test_ink_share_counts_pixels_with_a_dark_channel():
    images = torch.ones(2, 3, 2, 2)
    images[0, 1, 0, 0] = 0.5  # one of four pixels has a dark channel
    images[1, :, 1, 1] = 0.95  # pale, not ink
    assert quality.ink_share(images).tolist() == [0.25, 0.0]


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


def test_pairs_table_numbers_the_pairs_by_the_samples_own_indices():
    samples, train = torch.zeros(3, 4), torch.eye(4)
    samples[1] = train[2]  # the only inked sample (index 1 of the subset below) copies training image 2
    report = memorization_report(samples[[0, 1]], train, train[:2], num_pairs=1)
    split = argparse.Namespace(names=["a.png", "b.png", "c.png", "d.png"])
    table = quality.pairs_table(report, torch.tensor([0, 2]), torch.tensor([0, 1, 1]), split, ["x", "y"])
    assert table.splitlines()[2] == "| 2 | y | c.png | 0.000 | 0.000 |"


def _pipe(num_classes, in_channels, background):
    config = argparse.Namespace(num_classes=num_classes, in_channels=in_channels)
    return argparse.Namespace(unet=argparse.Namespace(config=config), background=background)


def test_check_model_refuses_unconditional_rgba_and_other_backgrounds_in_one_line():
    quality.check_model(_pipe(9, 3, "white"), "m")  # accepted
    with pytest.raises(SystemExit, match=r"^m is unconditional; give a class-conditional model$"):
        quality.check_model(_pipe(None, 3, "white"), "m")
    for channels, background in ((4, "white"), (3, "black"), (1, "white")):
        with pytest.raises(
            SystemExit, match=f"^m makes {channels}-channel images on {background}; .* --background white$"
        ):
            quality.check_model(_pipe(9, channels, background), "m")
