"""A tiny distilled model for the tests of its sampling side: students for 1, 2 and 4 steps (4 the default)
of one class-conditional UNetConfig, with a DDIM sampler (trailing, v-prediction, eta 0) as the trainer
makes them. Imported by the tests that need it (tests/ is on sys.path)."""

import torch

from diffusion import DiffusionPipeline
from diffusion.io.sampling_record import SamplingRecord
from diffusion.models import UNet, UNetConfig
from diffusion.schedulers import DDIMConfig, DDIMScheduler

CLASSES = ("a", "b", "c")
STEPS = (1, 2, 4)
GUIDANCE_RANGE = (1.0, 4.0)


def student_config(guided: bool = True) -> UNetConfig:
    """A 1-channel 8x8 UNet of two levels of 8 and 16 channels; ``guided``: with the guidance embedding."""
    return UNetConfig(
        in_channels=1,
        sample_size=(8, 8),
        base_channels=8,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_levels=(),
        mid_attention=False,
        norm_groups=4,
        num_classes=len(CLASSES),
        guidance_embedding=guided,
    )


def student_unet(seed: int, guided: bool = True) -> UNet:
    """A student at torch seed ``seed``, its guidance MLP's zero last layer randomised so that w matters."""
    torch.manual_seed(seed)
    unet = UNet(student_config(guided)).eval()
    if guided:
        torch.nn.init.normal_(unet.guidance_embed.linear_2.weight, std=0.5)
    return unet


def student_scheduler() -> DDIMScheduler:
    return DDIMScheduler(
        DDIMConfig(prediction_type="v_prediction", timestep_spacing="trailing", eta=0.0, set_alpha_to_one=True)
    )


def student_pipeline(guided: bool = True) -> DiffusionPipeline:
    """The default (4-step) student at seed 4, the 1- and 2-step ones at seeds 1 and 2."""
    record = SamplingRecord("progressive", STEPS, 4, GUIDANCE_RANGE if guided else None)
    others = {n: student_unet(n, guided) for n in (1, 2)}
    return DiffusionPipeline(student_unet(4, guided), student_scheduler(), CLASSES, sampling=record, step_unets=others)
