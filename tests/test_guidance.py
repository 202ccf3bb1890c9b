"""Classifier-free guidance: the combination rule, its rescale, and the pipeline's class conditioning."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.guiders.guider_utils import rescale_noise_cfg
from torch import nn

from diffusion import DiffusionPipeline
from diffusion.guidance import class_label_tensor, class_slug, classifier_free_guidance
from diffusion.metrics.classifier import Classifier
from diffusion.models import UNet, UNetConfig
from diffusion.schedulers import SCHEDULER_NAMES, NoiseSchedule, SchedulerConfig, get_scheduler

ROOT = Path(__file__).resolve().parents[1]
CLASS_NAMES = ["cat", "dog", "fox"]
# The clean image each class stands for (and the null class, last); a guided x_0 stays inside [-1, 1].
TARGETS = torch.tensor([0.2, -0.3, 0.35, 0.1])


class OracleUNet(nn.Module):
    """A perfect denoiser for a data set where class c is the constant image TARGETS[c]: it outputs
    the exact ε for its input x_t, which makes x̂_0 = TARGETS[c] at every level. Timesteps must be
    integers (no Karras σ) so that ᾱ_t is known."""

    def __init__(self, prediction_type: str = "epsilon") -> None:
        super().__init__()
        self.config = UNetConfig(
            in_channels=1, sample_size=(4, 4), num_classes=3, channel_mult=(1,), attention_levels=(), norm_groups=1
        )
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the pipeline a device and dtype
        self.schedule = NoiseSchedule(SchedulerConfig(prediction_type=prediction_type))
        self.calls: list[tuple[int, list[int] | None]] = []

    def forward(self, sample, timesteps, class_labels=None):
        self.calls.append((sample.shape[0], None if class_labels is None else class_labels.tolist()))
        if class_labels is None:
            class_labels = torch.full((sample.shape[0],), 3)
        x0 = TARGETS[class_labels].reshape(-1, 1, 1, 1).expand_as(sample).double()
        t = timesteps.round().long()
        alpha = self.schedule.alphas_cumprod[t].sqrt().reshape(-1, 1, 1, 1)
        sigma = (1 - self.schedule.alphas_cumprod[t]).sqrt().reshape(-1, 1, 1, 1)
        eps = (sample.double() - alpha * x0) / sigma
        return {"epsilon": eps, "v_prediction": alpha * eps - sigma * x0, "sample": x0}[
            self.schedule.config.prediction_type
        ].to(sample.dtype)


def oracle_pipeline(prediction_type: str = "epsilon") -> DiffusionPipeline:
    scheduler = get_scheduler("ddim", {"prediction_type": prediction_type, "timestep_spacing": "trailing"})
    return DiffusionPipeline(OracleUNet(prediction_type), scheduler, CLASS_NAMES)


def test_guidance_is_the_linear_rule_and_rescale_matches_diffusers():
    g = torch.Generator().manual_seed(0)
    uncond, cond = torch.randn(3, 2, 5, 5, generator=g), torch.randn(3, 2, 5, 5, generator=g)
    torch.testing.assert_close(classifier_free_guidance(uncond, cond, 0.0), uncond)
    torch.testing.assert_close(classifier_free_guidance(uncond, cond, 1.0), cond)
    torch.testing.assert_close(classifier_free_guidance(uncond, cond, 3.0), uncond + 3 * (cond - uncond))
    for phi in (0.3, 0.7, 1.0):
        guided = uncond + 4 * (cond - uncond)
        expected = rescale_noise_cfg(guided.clone(), cond.clone(), guidance_rescale=phi)  # the oracle
        torch.testing.assert_close(classifier_free_guidance(uncond, cond, 4.0, phi), expected)
    rescaled = classifier_free_guidance(uncond, cond, 4.0, 1.0)
    torch.testing.assert_close(rescaled.std(dim=(1, 2, 3)), cond.std(dim=(1, 2, 3)))  # eq. 15's purpose


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
@pytest.mark.parametrize("scale", [0.0, 1.0, 2.5])
def test_every_sampler_lands_on_the_guided_image(name, scale):
    """With a perfect denoiser, guidance w makes x̂_0 = x_∅ + w·(x_c - x_∅) at every level (the rule is
    linear in ε, and ε is affine in x̂_0), so every sampler, stochastic ones included, ends exactly there."""
    pipe = oracle_pipeline()
    labels = ["cat", "dog", "fox", 1]
    images = pipe(4, 10, name, class_labels=labels, guidance_scale=scale, output_type="tensor", seed=3)
    ids = torch.tensor([0, 1, 2, 1])
    x0 = TARGETS[3] + scale * (TARGETS[ids] - TARGETS[3])  # (4,) in [-1, 1]
    expected = (x0 / 2 + 0.5).reshape(4, 1, 1, 1).expand(4, 1, 4, 4)
    torch.testing.assert_close(images, expected, rtol=0, atol=2e-3)  # float32 stepping near σ = 0


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_guidance_applies_to_every_prediction_type(prediction_type):
    pipe = oracle_pipeline(prediction_type)
    images = pipe(1, 10, "dpmsolver++", class_labels="fox", guidance_scale=1.5, output_type="tensor")
    x0 = TARGETS[3] + 1.5 * (TARGETS[2] - TARGETS[3])
    torch.testing.assert_close(images, torch.full((1, 1, 4, 4), float(x0 / 2 + 0.5)), rtol=0, atol=2e-3)


def test_both_branches_run_in_one_batched_forward_and_shortcuts_skip_one():
    pipe = oracle_pipeline()
    pipe(2, 3, class_labels=["dog", "cat"], guidance_scale=2.0, output_type="tensor")
    assert pipe.unet.calls == [(4, [3, 3, 1, 0])] * 3  # null labels first, then the classes
    pipe.unet.calls.clear()
    pipe(2, 3, class_labels=["dog", "cat"], guidance_scale=1.0, output_type="tensor")
    assert pipe.unet.calls == [(2, [1, 0])] * 3
    pipe.unet.calls.clear()
    pipe(2, 3, class_labels=["dog", "cat"], guidance_scale=0.0, output_type="tensor")
    assert pipe.unet.calls == [(2, None)] * 3  # the model's null class
    pipe.unet.calls.clear()
    pipe(2, 3, output_type="tensor")  # no labels: the unconditional model, no guidance
    assert pipe.unet.calls == [(2, None)] * 3


def test_batched_guidance_agrees_with_the_single_branch_paths_on_a_real_unet(make_tiny_pipeline):
    pipe = make_tiny_pipeline(CLASS_NAMES, get_scheduler("dpmsolver++"), attention_levels=(1,))
    with torch.no_grad():
        pipe.unet.class_embed.weight.mul_(10)  # make the classes matter
    kwargs = dict(num_images=3, num_inference_steps=4, class_labels=[0, 1, 2], output_type="tensor", seed=5)
    cond = pipe(**kwargs, guidance_scale=1.0)
    uncond = pipe(**(kwargs | {"class_labels": None}))
    assert (cond - uncond).abs().max() > 0.05  # the label changes the image
    # A scale a hair from 1 (or 0) takes the batched two-branch path and must agree with the shortcut.
    torch.testing.assert_close(pipe(**kwargs, guidance_scale=1 + 1e-7), cond, rtol=0, atol=1e-4)
    torch.testing.assert_close(pipe(**kwargs, guidance_scale=1e-7), uncond, rtol=0, atol=1e-4)
    # Guidance does not couple images: each one equals its own single-image run.
    guided = pipe(**kwargs, guidance_scale=3.0, batch_size=3)
    alone = pipe(**(kwargs | {"num_images": 1, "class_labels": [2], "seed": 7}), guidance_scale=3.0)
    torch.testing.assert_close(guided[2:], alone, rtol=0, atol=1e-5)


def test_class_names_and_ids_resolve():
    pipe = oracle_pipeline()
    assert pipe.class_label_tensor("dog", 3).tolist() == [1, 1, 1]
    assert pipe.class_label_tensor(["fox", 0, "1"], 3).tolist() == [2, 0, 1]
    assert pipe.class_label_tensor(torch.tensor([2, 1]), 2).tolist() == [2, 1]
    assert pipe.class_label_tensor(np.array([2, 0]), 2).tolist() == [2, 0]  # numpy integers
    assert pipe.class_label_tensor(np.int64(1), 2).tolist() == [1, 1]
    assert pipe.class_label_tensor(None, 3) is None


def test_class_names_with_spaces_resolve_by_name_or_slug():
    names = ["Food & Drink", "Smileys & Emotion", "Flags"]
    for label in ("Food & Drink", "food-drink", "FOOD & drink", "food_drink"):
        assert class_label_tensor(label, 1, 3, names).tolist() == [0], label
    assert class_label_tensor(["smileys-emotion", "flags", "2"], 3, 3, names).tolist() == [1, 2, 2]
    unknown = r"^unknown class 'food'; this model knows ids 0-2: Food & Drink \(food-drink\), "
    with pytest.raises(ValueError, match=unknown + r"Smileys & Emotion \(smileys-emotion\), Flags \(flags\)$"):
        class_label_tensor("food", 1, 3, names)
    with pytest.raises(ValueError, match=r"^class 'food-drink' could be any of 'Food & Drink', 'food drink': give one "
                       r"of them exactly$"):  # fmt: skip
        class_label_tensor("food-drink", 1, 2, ["Food & Drink", "food drink"])
    assert class_label_tensor("food drink", 1, 2, ["Food & Drink", "food drink"]).tolist() == [1]  # exact wins
    assert class_slug("Travel & Places") == "travel-places" and class_slug("t-shirt") == "t-shirt"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"class_labels": "wolf"}, r"unknown class 'wolf'; this model knows ids 0-2: cat, dog, fox"),
        ({"class_labels": 3}, r"unknown class 3; this model knows ids 0-2"),
        ({"class_labels": True}, r"unknown class True"),
        ({"class_labels": ["cat", "dog"]}, r"got 2 class labels for 3 images; give one, or one per image"),
        ({"guidance_scale": 2.0}, r"guidance_scale needs class_labels"),
        ({"class_labels": "cat", "guidance_scale": -1.0}, r"guidance_scale must be a finite number >= 0"),
        ({"class_labels": "cat", "guidance_scale": float("nan")}, r"guidance_scale must be a finite number"),
        ({"class_labels": "cat", "guidance_scale": "2"}, r"guidance_scale must be a number, got '2'"),
        ({"class_labels": "cat", "guidance_rescale": 1.5}, r"guidance_rescale must be in \[0, 1\]"),
    ],
)
def test_bad_conditioning_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        oracle_pipeline()(3, 2, output_type="tensor", **kwargs)


def test_an_unconditional_model_refuses_labels_and_guidance(tiny_pipeline):
    pipe = tiny_pipeline
    with pytest.raises(ValueError, match="class labels were given, but this model is unconditional"):
        pipe(1, 2, class_labels="cat")
    with pytest.raises(ValueError, match="guidance needs a class-conditional model; this model is unconditional"):
        pipe(1, 2, guidance_scale=3.0)


def test_class_names_must_match_the_model(tmp_path):
    torch.manual_seed(0)
    config = UNetConfig(
        in_channels=1, sample_size=(8, 8), base_channels=16, channel_mult=(1, 2), norm_groups=8, num_classes=3
    )
    with pytest.raises(ValueError, match="got 2 class names for a model of 3 classes"):
        DiffusionPipeline(UNet(config), get_scheduler("ddim"), ["cat", "dog"])
    DiffusionPipeline(UNet(config), get_scheduler("ddim"), CLASS_NAMES).save_pretrained(tmp_path / "m")
    index = tmp_path / "m" / "model_index.json"
    saved = json.loads(index.read_text())
    for names, message in ((["cat", "dog"], "got 2 class names for a model of 3 classes"), ("cat", "must be a list")):
        index.write_text(json.dumps(saved | {"class_names": names}))
        with pytest.raises(ValueError, match=message):
            DiffusionPipeline.from_pretrained(tmp_path / "m")
    index.write_text(json.dumps(saved))
    assert DiffusionPipeline.from_pretrained(tmp_path / "m").class_names == CLASS_NAMES


def test_the_shipped_model_draws_the_class_it_is_asked_for():
    """The shipped classifier names the requested class for at least 90% of guided samples (10 per
    class, default guidance, bf16 for speed). docs/benchmarks.md records the full measurement (1,000
    images per row: 93.7% at the default w = 1.5)."""
    pipe = DiffusionPipeline.from_pretrained(dtype=torch.bfloat16)
    classifier = Classifier.from_pretrained(ROOT / "assets" / "fashion-mnist-classifier").eval()
    assert pipe.class_names == classifier.class_names and pipe.unet.config.num_classes == 10
    labels = torch.arange(10).repeat_interleave(10)
    images = pipe(100, class_labels=labels, seed=0, output_type="tensor")
    with torch.inference_mode():
        predicted = classifier(images * 2 - 1).argmax(dim=1)
    assert (predicted == labels).float().mean().item() >= 0.9


def test_random_classes_come_from_each_images_seed():
    pipe = oracle_pipeline()
    labels = pipe.random_class_labels(6, 10)
    assert labels.tolist() == [pipe.random_class_labels(1, [10 + i]).item() for i in range(6)]  # per seed
    assert len(set(pipe.random_class_labels(60, 0).tolist())) == 3  # every class turns up
    by_seed = pipe(6, 3, class_labels="random", seed=10, output_type="tensor", batch_size=4)
    explicit = pipe(6, 3, class_labels=labels, seed=10, output_type="tensor")
    torch.testing.assert_close(by_seed, explicit, rtol=0, atol=0)
    with_generator = pipe.random_class_labels(4, generator=torch.Generator().manual_seed(1))
    assert with_generator.tolist() == torch.randint(3, (4,), generator=torch.Generator().manual_seed(1)).tolist()


def test_random_classes_need_a_class_conditional_model(tiny_pipeline):
    with pytest.raises(ValueError, match="class_labels='random' needs a class-conditional model"):
        tiny_pipeline(1, 2, class_labels="random")
