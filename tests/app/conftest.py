"""Fixtures of the web app's tests: a shelf of the tiny test models, an outbox, and page-like settings."""

from dataclasses import replace

import pytest

pytest.importorskip("gradio", reason="the app extra is not installed: pip install -e '.[app]'")

from diffusion.app import Outbox, Sampling  # after the skip
from diffusion.app.models import ModelShelf


@pytest.fixture
def shelf(tiny_conditional_model, tiny_model) -> ModelShelf:
    """The tiny class-conditional model (the default: classes cat, dog; DDIM), the tiny unconditional one,
    then the shipped models."""
    return ModelShelf([str(tiny_conditional_model), str(tiny_model)])


@pytest.fixture
def outbox(tmp_path) -> Outbox:
    return Outbox(tmp_path / "outbox")


@pytest.fixture
def settings(tiny_conditional_model):
    """Page settings for the tiny class-conditional model, with the given fields changed."""
    base = Sampling(
        model=str(tiny_conditional_model),
        sampler="ddim",
        steps=4,
        class_choice="random",
        guidance_scale=1.5,
        guidance_rescale=0.0,
        seed=7,
        num_images=3,
        batch_size=2,
    )
    return lambda **changes: replace(base, **changes)
