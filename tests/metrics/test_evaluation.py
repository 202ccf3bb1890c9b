"""`diffusion.metrics.evaluation`: reference images, and FD@N / KID@N of a tiny model against them."""

import logging
import math

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion.data import fit, load_image, to_tensor
from diffusion.metrics import compare_features, load_feature_extractor
from diffusion.metrics.evaluation import evaluate, load_reference_images
from diffusion.pipeline import DEFAULT_GUIDANCE_SCALE, DiffusionPipeline
from diffusion.schedulers import SCHEDULERS


class Pixels:
    """A pluggable extractor: the raw pixels. It keeps every batch it is given in ``seen``."""

    name, description = "pixels", "raw pixels"

    def __init__(self, feature_dim: int = 64) -> None:
        self.feature_dim = feature_dim
        self.seen: list[torch.Tensor] = []

    def features(self, images: torch.Tensor) -> torch.Tensor:
        self.seen.append(images)
        return images.flatten(1).float()


def test_reference_images_are_a_seeded_draw_converted_like_training_data(reference_folder):
    real = load_reference_images(reference_folder, 5, channels=1, size=(8, 8), seed=3)
    assert real.shape == (5, 1, 8, 8) and real.dtype == torch.float32
    assert real.min() >= -1 and real.max() <= 1
    files = sorted(reference_folder.rglob("*.png"), key=lambda p: p.relative_to(reference_folder).as_posix())
    order = torch.randperm(12, generator=torch.Generator().manual_seed(3))[:5].tolist()
    expected = torch.stack([to_tensor(fit(load_image(files[i], 1), (8, 8), None)) for i in order])
    torch.testing.assert_close(real, expected, rtol=0, atol=0)
    torch.testing.assert_close(load_reference_images(reference_folder, 5, 1, (8, 8), seed=3), real, rtol=0, atol=0)
    assert not torch.equal(load_reference_images(reference_folder, 5, 1, (8, 8), seed=4), real)


def test_unreadable_reference_files_are_skipped_with_a_warning(tmp_path, caplog):
    for i in range(3):
        Image.fromarray(np.full((4, 4), 40 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    caplog.set_level(logging.WARNING, logger="diffusion.metrics.evaluation")
    real = load_reference_images(tmp_path, 3, channels=3, size=(4, 4))
    assert real.shape == (3, 3, 4, 4)
    assert sorted(round(v) for v in ((real[:, 0, 0, 0] + 1) * 127.5).tolist()) == [0, 40, 80]  # every good file
    assert "skipped 1 unreadable reference file(s)" in caplog.text and "broken.png" in caplog.text
    with pytest.raises(ValueError, match=r"has only 3 readable images, fewer than the 4 asked for"):
        load_reference_images(tmp_path, 4, channels=3, size=(4, 4))


@pytest.mark.parametrize(
    "folder, n, channels, error, message",
    [
        ("{tmp}/none", 2, 1, FileNotFoundError, r"reference folder .*none not found"),
        ("{ref}", 13, 1, ValueError, r"reference folder .*real has 12 image files, fewer than the 13 asked for"),
        ("{ref}", 2, 2, ValueError, "reference images can be loaded with 1, 3 or 4 channels, not 2"),
    ],
)
def test_reference_errors(reference_folder, tmp_path, folder, n, channels, error, message):
    folder = folder.replace("{tmp}", str(tmp_path)).replace("{ref}", str(reference_folder))
    with pytest.raises(error, match=message):
        load_reference_images(folder, n, channels, (8, 8))


def test_evaluate_matches_the_pieces_it_is_made_of(tiny_model, tiny_classifier, reference_folder):
    """The oracle: the same sampling, reference draw, features and KID generator, done by hand."""
    result = evaluate(
        tiny_model,
        reference_folder,
        8,
        num_inference_steps=2,
        scheduler="ddim",
        extractor_path=tiny_classifier,
        num_reference=10,
        seed=5,
        batch_size=3,
    )
    assert (result.label, result.kid_label, result.num_images, result.num_reference) == ("FD@8", "KID@8", 8, 10)
    assert (result.extractor, result.feature_dim, result.kid_subset_size, result.kid_num_subsets) == (
        "classifier",
        16,
        4,  # min(8, 10) // 2
        100,
    )
    assert result.settings == {
        "model": str(tiny_model),
        "reference": str(reference_folder),
        "scheduler": "ddim",
        "steps": 2,
        "nfe": 2,
        "seed": 5,
        "dtype": "float32",
        "device": "cpu",
        "image_size": [8, 8],
        "channels": 1,
        "background": "white",
        "extractor_description": load_feature_extractor("classifier", tiny_classifier).description,
    }
    extractor = load_feature_extractor("classifier", tiny_classifier)
    generated = DiffusionPipeline.from_pretrained(tiny_model)(8, 2, scheduler="ddim", seed=5, output_type="tensor")
    real = load_reference_images(reference_folder, 10, 1, (8, 8), seed=5)
    expected = compare_features(
        extractor.features(generated * 2 - 1),
        extractor.features(real),
        "classifier",
        generator=torch.Generator().manual_seed(5),
    )
    # Batches of 3 vs 64 change float32 convolution sums in the last bits only.
    assert result.fd == pytest.approx(expected.fd, rel=1e-5)
    assert result.kid == pytest.approx(expected.kid, rel=1e-4, abs=1e-9)
    assert result.fd > 0 and math.isfinite(result.kid) and result.kid_std > 0


def test_evaluate_takes_an_extractor_object_and_a_loaded_pipeline(tiny_model, reference_folder):
    pipe = DiffusionPipeline.from_pretrained(tiny_model)
    result = evaluate(pipe, reference_folder, 4, num_inference_steps=1, extractor=Pixels(), kid_subset_size=3)
    assert (result.extractor, result.feature_dim, result.kid_subset_size) == ("pixels", 64, 3)
    assert (
        result.settings["model"] == "<in-memory pipeline>" and result.settings["extractor_description"] == "raw pixels"
    )
    assert result.settings["scheduler"] == "ddim"  # the model's own
    assert result.fd > 0


def test_evaluate_runs_every_registered_scheduler(tiny_model, tiny_classifier, reference_folder):
    pipe = DiffusionPipeline.from_pretrained(tiny_model)
    extractor = load_feature_extractor("classifier", tiny_classifier)
    for name in SCHEDULERS:
        result = evaluate(pipe, reference_folder, 4, num_inference_steps=2, scheduler=name, extractor=extractor)
        assert result.settings["scheduler"] == name and math.isfinite(result.fd), name


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_images": 1}, r"num_images must be an integer >= 2 \(FD needs a covariance\), got 1"),
        ({"num_reference": 1}, "num_reference must be an integer >= 2"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
        ({"kid_num_subsets": 0}, "kid_num_subsets must be an integer >= 1, got 0"),
        ({"kid_subset_size": 5}, r"kid_subset_size must be at most 4 \(the smaller image count\), got 5"),
        ({"scheduler": "nope"}, "unknown scheduler 'nope'; expected one of "),
        ({"num_inference_steps": 0}, r"num_inference_steps must be in \[1, 1000\]"),
        ({"extractor": "fid"}, "unknown extractor 'fid'"),
    ],
)
def test_evaluate_refuses_bad_settings_before_sampling(
    tiny_model, tiny_classifier, reference_folder, monkeypatch, kwargs, message
):
    monkeypatch.setattr(DiffusionPipeline, "__call__", lambda *a, **k: pytest.fail("sampled before checking"))
    num_images = kwargs.pop("num_images", 4)
    with pytest.raises(ValueError, match=message):
        evaluate(tiny_model, reference_folder, num_images, extractor_path=tiny_classifier, **kwargs)


def test_evaluate_refuses_settings_that_would_be_ignored(tiny_model, tiny_classifier, reference_folder):
    extractor = load_feature_extractor("classifier", tiny_classifier)
    with pytest.raises(ValueError, match="extractor_path goes with an extractor name, not with an extractor object"):
        evaluate(tiny_model, reference_folder, 4, extractor=extractor, extractor_path=tiny_classifier)
    pipe = DiffusionPipeline.from_pretrained(tiny_model)
    with pytest.raises(ValueError, match="device and dtype apply to loading a model folder; move a loaded pipeline"):
        evaluate(pipe, reference_folder, 4, extractor=extractor, dtype=torch.bfloat16)


def test_an_extractor_that_cannot_take_the_models_images_fails_before_sampling(
    tiny_model, reference_folder, tmp_path, monkeypatch
):
    from diffusion.metrics.classifier import Classifier, ClassifierConfig

    Classifier(ClassifierConfig(in_channels=3, width=8, feature_dim=16, norm_groups=4)).save_pretrained(tmp_path / "c")
    monkeypatch.setattr(DiffusionPipeline, "__call__", lambda *a, **k: pytest.fail("sampled before checking"))
    with pytest.raises(ValueError, match="images have 1 channels but the classifier expects 3") as refused:
        evaluate(tiny_model, reference_folder, 4, extractor_path=tmp_path / "c")
    assert str(refused.value).endswith(
        ": this extractor cannot measure the model's 1-channel 8x8 images; pick another extractor ('inception' or "
        "'efficientnet-lite0'), or a classifier trained on this data (bench/train_classifier.py) as extractor_path"
    )


def test_a_class_conditional_model_is_measured_on_random_classes(tiny_conditional_pipeline, reference_folder):
    """Its images are those of class_labels="random" at the default guidance, and the settings say so."""
    pipe = tiny_conditional_pipeline

    result = evaluate(pipe, reference_folder, 6, num_inference_steps=2, extractor=Pixels(), seed=3)
    assert result.settings["class_labels"] == "random"
    assert result.settings["guidance_scale"] == DEFAULT_GUIDANCE_SCALE
    labels = pipe.random_class_labels(6, 3)
    images = pipe(6, 2, seed=3, class_labels=labels, output_type="tensor")
    real = load_reference_images(reference_folder, 6, 1, (8, 8), seed=3)
    expected = compare_features(
        (images * 2 - 1).flatten(1), real.flatten(1), "pixels", generator=torch.Generator().manual_seed(3)
    )
    assert result.fd == pytest.approx(expected.fd, rel=1e-5)


def test_an_rgba_model_is_measured_against_rgba_reference_images(make_tiny_pipeline, reference_folder, tmp_path):
    """Both sides reach the extractor with 4 channels; the reference keeps an image's alpha (opaque without)."""
    pipe = make_tiny_pipeline(in_channels=4, out_channels=4)
    extractor = Pixels(256)
    result = evaluate(pipe, reference_folder, 4, num_inference_steps=2, extractor=extractor, seed=1)
    assert result.settings["channels"] == 4 and result.fd > 0
    real, generated = extractor.seen
    assert real.shape == generated.shape == (4, 4, 8, 8) and (real[:, 3] == 1).all()  # RGB files: opaque
    expected = pipe(4, 2, seed=1, output_type="tensor") * 2 - 1
    torch.testing.assert_close(generated, expected, rtol=0, atol=0)
    pixels = np.zeros((2, 2, 4), dtype=np.uint8)
    pixels[0, 0] = (10, 20, 30, 128)
    for i in range(2):
        Image.fromarray(pixels, mode="RGBA").save(tmp_path / f"{i}.png")
    transparent = load_reference_images(tmp_path, 2, channels=4, size=(2, 2))
    torch.testing.assert_close(transparent[0, :, 0, 0], torch.tensor([10.0, 20.0, 30.0, 128.0]) / 127.5 - 1)
    assert (transparent[0, 3, 1, 1] == -1).all()  # fully transparent


@pytest.mark.parametrize(("background", "value"), [("white", 1.0), ("black", -1.0), ("random", 1.0)])
def test_reference_transparency_is_composited_on_the_models_background(make_tiny_pipeline, tmp_path, background, value):
    """As the model's training images were: on black for black, on white for white and random (no one colour)."""
    tiny = make_tiny_pipeline()
    pipe = DiffusionPipeline(tiny.unet, tiny.scheduler, background=background)
    pixels = np.zeros((8, 8, 4), dtype=np.uint8)
    pixels[:, :, :3], pixels[4:, :, 3] = 255, 255  # white, transparent in the top half, opaque below
    for i in range(4):
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
    extractor = Pixels()
    result = evaluate(pipe, tmp_path, 4, num_inference_steps=1, extractor=extractor, seed=0)
    assert result.settings["background"] == background  # the model's own, random included
    real = extractor.seen[0]  # (4, 1, 8, 8) in [-1, 1]
    assert real.shape == (4, 1, 8, 8)
    assert (real[:, :, :4] == value).all() and (real[:, :, 4:] == 1).all()
    black = load_reference_images(tmp_path, 2, 1, (8, 8), background=(0, 0, 0))
    assert (black[:, :, :4] == -1).all() and (black[:, :, 4:] == 1).all()
