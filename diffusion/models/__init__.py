"""The UNet noise predictor and its building blocks."""

from .diffusers_map import (
    diffusers_name_map,
    diffusers_unet_kwargs,
    from_diffusers_state_dict,
    to_diffusers_state_dict,
)
from .unet import UNet
from .unet_config import PRESETS, UNetConfig, preset

__all__ = [
    "PRESETS",
    "UNet",
    "UNetConfig",
    "diffusers_name_map",
    "diffusers_unet_kwargs",
    "from_diffusers_state_dict",
    "preset",
    "to_diffusers_state_dict",
]
