"""Our UNet against diffusers' UNet2DModel, built from the same config with weights copied across."""

import pytest
import torch
from diffusers import UNet2DModel

from diffusion.models import (
    PRESETS,
    UNet,
    UNetConfig,
    diffusers_name_map,
    diffusers_unet_kwargs,
    from_diffusers_state_dict,
    to_diffusers_state_dict,
)

# The UNet2DModel config published with google/ddpm-cifar10-32, written out so nothing is downloaded.
DDPM_CIFAR10_32 = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=[128, 256, 256, 256],
    layers_per_block=2,
    down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    attention_head_dim=None,
    flip_sin_to_cos=False,
    freq_shift=1,
    downsample_padding=0,
    norm_eps=1e-6,
    norm_num_groups=32,
    act_fn="silu",
    mid_block_scale_factor=1,
    time_embedding_type="positional",
    center_input_sample=False,
    dropout=0.0,
)


def paired(config: UNetConfig, seed: int = 0) -> tuple[UNet, UNet2DModel]:
    torch.manual_seed(seed)
    ours = UNet(config).eval()
    # Random non-zero norms and biases, so that a swapped name cannot hide behind default init.
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.05 * torch.randn_like(p))
    theirs = UNet2DModel(**diffusers_unet_kwargs(config)).eval()
    theirs.load_state_dict(to_diffusers_state_dict(ours.state_dict(), config), strict=True)
    return ours, theirs


def test_ddpm_cifar10_preset_is_the_published_google_architecture():
    ours, theirs = paired(PRESETS["ddpm-cifar10"])
    published = UNet2DModel(**DDPM_CIFAR10_32)
    assert {k: v.shape for k, v in published.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()
    }
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 999])
    with torch.no_grad():
        # Identical math in a different order of float32 operations through ~60 layers.
        torch.testing.assert_close(ours(x, t), theirs(x, t).sample, rtol=1e-4, atol=2e-5)


SMALL = dict(sample_size=(16, 16), base_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1, norm_groups=8)


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # diffusers' own default conventions: flip_sin_to_cos, freq_shift 0, padding 1, eps 1e-5
        {"flip_sin_to_cos": False, "freq_shift": 1.0, "downsample_padding": 0, "norm_eps": 1e-6},
        {"head_channels": 8, "attention_levels": (1, 2)},
        {"num_heads": 4, "attention_levels": (1, 2), "channel_mult": (1, 2, 2)},
        {"time_conditioning": "scale_shift", "resample": "resblock", "attention_levels": (0, 2)},
        {"num_classes": 5, "time_embed_dim": 48, "out_channels": 2, "in_channels": 1},
        {"mid_attention": False, "num_res_blocks": 2, "channel_mult": (1, 1, 2, 3), "sample_size": (16, 32)},
    ],
)
def test_matches_diffusers_unet2dmodel(overrides):
    config = UNetConfig(**(SMALL | overrides))
    ours, theirs = paired(config)
    x = torch.randn(3, config.in_channels, 16, 24)  # non-square on purpose
    t = torch.tensor([0, 37, 999])
    labels = torch.tensor([0, 4, 5]) if config.num_classes else None
    with torch.no_grad():
        torch.testing.assert_close(ours(x, t, labels), theirs(x, t, class_labels=labels).sample)


def test_state_dict_round_trip_is_lossless():
    config = UNetConfig(**SMALL, head_channels=8)
    state = UNet(config).state_dict()
    back = from_diffusers_state_dict(to_diffusers_state_dict(state, config), config)
    assert back.keys() == state.keys()
    for name in state:
        torch.testing.assert_close(back[name], state[name], rtol=0, atol=0)


def test_name_map_is_explicit_and_one_to_one():
    config = PRESETS["ddpm-cifar10"]
    name_map = diffusers_name_map(config)
    assert name_map["down.1.attn.0.qkv.weight"] == (
        "down_blocks.1.attentions.0.to_q.weight",
        "down_blocks.1.attentions.0.to_k.weight",
        "down_blocks.1.attentions.0.to_v.weight",
    )
    assert name_map["up.0.res.2.skip.weight"] == ("up_blocks.3.resnets.2.conv_shortcut.weight",)
    assert name_map["mid.res2.emb_proj.bias"] == ("mid_block.resnets.1.time_emb_proj.bias",)
    assert name_map["down.0.resampler.conv.weight"] == ("down_blocks.0.downsamplers.0.conv.weight",)
    theirs = [n for names in name_map.values() for n in names]
    assert len(theirs) == len(set(theirs))


def test_inexpressible_head_layout_is_refused():
    config = UNetConfig(**SMALL | {"num_heads": 2, "attention_levels": (0, 1)})
    with pytest.raises(ValueError, match=r"num_heads=2 at attention widths \[16, 32\] cannot be expressed"):
        diffusers_unet_kwargs(config)


def test_missing_diffusers_weights_are_named():
    config = UNetConfig(**SMALL)
    state = to_diffusers_state_dict(UNet(config).state_dict(), config)
    del state["conv_in.weight"]
    with pytest.raises(ValueError, match=r"diffusers weights lack 1 tensor\(s\) .*conv_in.weight"):
        from_diffusers_state_dict(state, config)
