"""The app's model shelf: names, loading once per dtype, and what the Model tab shows."""

import json

import pytest
import torch
from students import student_pipeline  # tests/ is on sys.path

from diffusion.app.models import ModelShelf, class_choices, default_class, describe, model_card, model_config
from diffusion.io.model_folder import SHIPPED_MODELS


def test_the_given_models_come_first_then_the_shipped_ones_once(tiny_model):
    shelf = ModelShelf([str(tiny_model), "noto-emoji"])
    assert shelf.names == [str(tiny_model), "noto-emoji", "fashion-mnist", "fashion-mnist-fast"]
    assert shelf.default == str(tiny_model)
    assert ModelShelf().default == "fashion-mnist" and ModelShelf().names == list(SHIPPED_MODELS)


def test_a_model_loads_once_per_dtype_and_the_least_recently_used_is_dropped(shelf, tiny_model, tiny_conditional_model):
    first = shelf.load(str(tiny_conditional_model))
    assert shelf.load(str(tiny_conditional_model)) is first
    assert shelf.load(str(tiny_conditional_model), "bf16").dtype == torch.bfloat16
    shelf.load(str(tiny_conditional_model))  # used again: now the newest
    shelf.load(str(tiny_model))  # a third: the bf16 one goes (keep=2)
    assert shelf.load(str(tiny_conditional_model)) is first
    assert sorted(shelf._loaded) == sorted([(str(tiny_conditional_model), "fp32"), (str(tiny_model), "fp32")])


def test_unknown_models_and_dtypes_are_refused_in_one_line(shelf):
    with pytest.raises(
        ValueError, match=r"^unknown model 'elsewhere'; choose one of .*fashion-mnist, noto-emoji, fashion-mnist-fast$"
    ):
        shelf.load("elsewhere")
    with pytest.raises(ValueError, match=r"^unknown dtype 'fp64'; choose one of fp32, bf16, fp16$"):
        shelf.load(shelf.default, "fp64")


def test_class_choices(tiny_conditional_pipeline, tiny_pipeline):
    assert class_choices(tiny_conditional_pipeline) == ["cat", "dog", "random", "none"]
    assert default_class(tiny_conditional_pipeline) == "random"
    assert class_choices(tiny_pipeline) == ["none"] and default_class(tiny_pipeline) == "none"


def test_the_model_tab_describes_the_model(tiny_conditional_pipeline, tiny_conditional_model):
    text = describe(tiny_conditional_pipeline, "tiny", tiny_conditional_model)
    parameters = sum(p.numel() for p in tiny_conditional_pipeline.unet.parameters())
    assert f"| parameters | {parameters:,} |" in text
    assert "| images | 8x8, 1 channel(s) |" in text and "| background | white (what transparency" in text
    assert "| classes | cat, dog |" in text and "| default sampler | `ddim`, 20 steps |" in text
    config = json.loads(model_config(tiny_conditional_pipeline))
    assert config["unet"]["num_classes"] == 2 and config["unet"]["sample_size"] == [8, 8]
    assert "num_train_timesteps" in config["scheduler"]


def test_the_model_card_is_the_folders_readme(tmp_path):
    assert model_card(SHIPPED_MODELS["noto-emoji"]).startswith("# Model card: Noto Emoji")
    assert model_card(tmp_path) == f"`{tmp_path}` has no model card (README.md)."


def test_the_model_tab_shows_a_distilled_models_steps_and_guidance_range():
    pipe = student_pipeline()
    text = describe(pipe, "student", SHIPPED_MODELS["fashion-mnist"])
    assert "| default sampler | `ddim`, 4 steps |" in text
    assert "| distilled | progressive: samples with 1, 2 or 4 steps; guidance scale 1 to 4, in one pass |" in text
    assert json.loads(model_config(pipe))["sampling"]["steps"] == [1, 2, 4]
    unguided = describe(student_pipeline(guided=False), "student", SHIPPED_MODELS["fashion-mnist"])
    assert "| distilled | progressive: samples with 1, 2 or 4 steps |" in unguided
