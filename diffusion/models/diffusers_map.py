"""The explicit correspondence between our `UNet` and diffusers' ``UNet2DModel``.

Two things are stated here, once: how a `UNetConfig` is written as ``UNet2DModel`` keyword arguments,
and how each of our parameter names is spelt in diffusers. Our attention has one fused ``qkv``
projection where diffusers has ``to_q``, ``to_k`` and ``to_v``; the fused weight is their
concatenation along the output dimension. Everything else is a rename. Import and export of whole
pipelines build on these functions.
"""

import re
from typing import Any

import torch

from .unet import UNet, UNetConfig

_RES_PARTS = {"emb_proj": "time_emb_proj", "skip": "conv_shortcut"}
_ATTN_PARTS = {"norm": "group_norm", "proj_out": "to_out.0", "qkv": ("to_q", "to_k", "to_v")}
_TOP = {"conv_in": "conv_in", "conv_out": "conv_out", "norm_out": "conv_norm_out"}
_TOP |= {"time_embed": "time_embedding", "class_embed": "class_embedding"}


def diffusers_unet_kwargs(config: UNetConfig) -> dict[str, Any]:
    """``UNet2DModel(**kwargs)`` arguments that build the same network as ``UNet(config)``.

    Every field is pinned, since diffusers' defaults differ from ours. Raises ``ValueError`` for a
    config that ``UNet2DModel`` cannot express.
    """
    c = config
    channels = [c.base_channels * m for m in c.channel_mult]
    attn_channels = {channels[level] for level in c.attention_levels}
    attn_channels |= {channels[-1]} if c.mid_attention else set()
    if c.head_channels is not None:
        head_dim = c.head_channels
    elif c.num_heads == 1:
        head_dim = None  # diffusers reads None as "one head as wide as the block"
    elif len(attn_channels) == 1:
        head_dim = attn_channels.pop() // c.num_heads
    else:
        raise ValueError(
            f"num_heads={c.num_heads} at attention widths {sorted(attn_channels)} cannot be expressed by "
            "UNet2DModel, which fixes the width per head; use head_channels instead"
        )
    plain_down, plain_up = (
        ("ResnetDownsampleBlock2D", "ResnetUpsampleBlock2D")
        if c.resample == "resblock"
        else ("DownBlock2D", "UpBlock2D")
    )
    levels = range(len(channels))
    height, width = c.sample_size
    return dict(
        sample_size=height if height == width else [height, width],
        in_channels=c.in_channels,
        out_channels=c.out_channels or c.in_channels,
        center_input_sample=False,
        time_embedding_type="positional",
        time_embedding_dim=c.time_embed_dim or 4 * c.base_channels,
        freq_shift=c.freq_shift,
        flip_sin_to_cos=c.flip_sin_to_cos,
        down_block_types=["AttnDownBlock2D" if i in c.attention_levels else plain_down for i in levels],
        mid_block_type="UNetMidBlock2D",
        up_block_types=["AttnUpBlock2D" if i in c.attention_levels else plain_up for i in reversed(levels)],
        block_out_channels=channels,
        layers_per_block=c.num_res_blocks,
        mid_block_scale_factor=1,
        downsample_padding=c.downsample_padding,
        downsample_type="resnet" if c.resample == "resblock" else "conv",
        upsample_type="resnet" if c.resample == "resblock" else "conv",
        dropout=c.dropout,
        act_fn="silu",
        attention_head_dim=head_dim,
        norm_num_groups=c.norm_groups,
        attn_norm_num_groups=c.norm_groups,
        norm_eps=c.norm_eps,
        resnet_time_scale_shift="scale_shift" if c.time_conditioning == "scale_shift" else "default",
        add_attention=c.mid_attention,
        class_embed_type=None,
        num_class_embeds=c.num_classes + 1 if c.num_classes else None,
        num_train_timesteps=None,
    )


def _rename_block(rest: str, parts: dict[str, Any]) -> tuple[str, ...]:
    head, _, tail = rest.partition(".")
    new = parts.get(head, head)
    return tuple(f"{n}.{tail}" for n in new) if isinstance(new, tuple) else (f"{new}.{tail}",)


def _diffusers_names(key: str, num_levels: int) -> tuple[str, ...]:
    head, _, tail = key.partition(".")
    if head in _TOP:
        return (f"{_TOP[head]}.{tail}",)
    if m := re.fullmatch(r"mid\.(res1|res2|attn)\.(.+)", key):
        part, rest = m.groups()
        if part == "attn":
            return tuple(f"mid_block.attentions.0.{n}" for n in _rename_block(rest, _ATTN_PARTS))
        return tuple(f"mid_block.resnets.{int(part[-1]) - 1}.{n}" for n in _rename_block(rest, _RES_PARTS))
    m = re.fullmatch(r"(down|up)\.(\d+)\.(res\.\d+|attn\.\d+|resampler)\.(.+)", key)
    assert m, f"no diffusers name for parameter {key}"
    side, level, part, rest = m.groups()
    block = f"down_blocks.{level}" if side == "down" else f"up_blocks.{num_levels - 1 - int(level)}"
    if part == "resampler":
        sub = "downsamplers.0" if side == "down" else "upsamplers.0"
        return tuple(f"{block}.{sub}.{n}" for n in _rename_block(rest, _RES_PARTS))
    kind, index = part.split(".")
    if kind == "attn":
        return tuple(f"{block}.attentions.{index}.{n}" for n in _rename_block(rest, _ATTN_PARTS))
    return tuple(f"{block}.resnets.{index}.{n}" for n in _rename_block(rest, _RES_PARTS))


def diffusers_name_map(config: UNetConfig) -> dict[str, tuple[str, ...]]:
    """Our parameter name -> the diffusers name(s); several names are concatenated along dim 0."""
    with torch.device("meta"):
        keys = UNet(config).state_dict().keys()
    return {key: _diffusers_names(key, len(config.channel_mult)) for key in keys}


def to_diffusers_state_dict(state: dict[str, torch.Tensor], config: UNetConfig) -> dict[str, torch.Tensor]:
    """Our state dict -> a ``UNet2DModel`` state dict for ``diffusers_unet_kwargs(config)``."""
    out = {}
    for ours, theirs in diffusers_name_map(config).items():
        out.update(zip(theirs, state[ours].chunk(len(theirs), dim=0), strict=True))
    return out


def from_diffusers_state_dict(state: dict[str, torch.Tensor], config: UNetConfig) -> dict[str, torch.Tensor]:
    """A ``UNet2DModel`` state dict -> ours; missing diffusers names raise ``ValueError``."""
    name_map = diffusers_name_map(config)
    missing = sorted(n for names in name_map.values() for n in names if n not in state)
    if missing:
        raise ValueError(f"diffusers weights lack {len(missing)} tensor(s) the config needs, e.g. {missing[:3]}")
    return {ours: torch.cat([state[n] for n in theirs], dim=0) for ours, theirs in name_map.items()}


def diffusers_defaults(class_name: str) -> dict[str, Any]:
    """The keyword arguments of diffusers' ``class_name`` (``"UNet2DModel"``, ``"DDIMScheduler"``, ...)
    with their defaults: the settings a diffusers ``config.json`` may hold, and what a missing one means."""
    import inspect

    import diffusers  # only here: importing diffusers is slow

    parameters = inspect.signature(getattr(diffusers, class_name).__init__).parameters
    return {k: p.default for k, p in parameters.items() if k != "self"}


def _normalised(value: Any) -> Any:
    """Lists and tuples as lists, numbers as floats: how two diffusers settings are compared."""
    if isinstance(value, list | tuple):
        return [_normalised(v) for v in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


def unet_config_from_diffusers(settings: dict[str, Any]) -> UNetConfig:
    """The `UNetConfig` of a diffusers ``UNet2DModel`` config dict (its ``config.json``).

    Missing keys mean diffusers' defaults. The result is checked by writing it back with
    `diffusers_unet_kwargs`: every setting must come back unchanged, so a model we cannot express is
    refused, never built wrong.

    Raises:
        ValueError: naming the first setting our UNet cannot express.
    """
    full = diffusers_defaults("UNet2DModel")
    full |= {k: v for k, v in settings.items() if k in full}
    channels = list(full["block_out_channels"])
    base = channels[0]
    if any(c % base for c in channels):
        raise ValueError(
            f"unsupported diffusers setting block_out_channels={channels}: each must be a multiple of the first"
        )
    size = full["sample_size"]
    if size is None:
        raise ValueError("the diffusers UNet2DModel config has no sample_size; add it to unet/config.json")
    embed_dim = full["time_embedding_dim"]
    classes = full["num_class_embeds"]
    kwargs = dict(
        in_channels=full["in_channels"],
        out_channels=None if full["out_channels"] == full["in_channels"] else full["out_channels"],
        sample_size=(size, size) if isinstance(size, int) else tuple(size),
        base_channels=base,
        channel_mult=tuple(c // base for c in channels),
        num_res_blocks=full["layers_per_block"],
        attention_levels=tuple(i for i, t in enumerate(full["down_block_types"]) if t.startswith("Attn")),
        mid_attention=bool(full["add_attention"]),
        head_channels=full["attention_head_dim"],
        dropout=float(full["dropout"]),
        norm_groups=full["norm_num_groups"],
        norm_eps=float(full["norm_eps"]),
        time_embed_dim=None if embed_dim in (None, 4 * base) else embed_dim,
        time_conditioning="scale_shift" if full["resnet_time_scale_shift"] == "scale_shift" else "additive",
        resample="resblock" if full["downsample_type"] == "resnet" else "conv",
        downsample_padding=full["downsample_padding"],
        flip_sin_to_cos=bool(full["flip_sin_to_cos"]),
        freq_shift=float(full["freq_shift"]),
        num_classes=classes - 1 if classes else None,
    )
    try:
        config = UNetConfig(**kwargs)
        expected = diffusers_unet_kwargs(config)
    except (ValueError, TypeError) as e:
        raise ValueError(f"this diffusers UNet2DModel cannot be built as our UNet: {e}") from None
    if full["attn_norm_num_groups"] is None:
        full["attn_norm_num_groups"] = full["norm_num_groups"]  # diffusers' meaning of None
    if full["time_embedding_dim"] is None:
        full["time_embedding_dim"] = 4 * base
    for key, ours in expected.items():
        theirs = full[key]
        if key == "sample_size" and isinstance(theirs, list | tuple) and len(set(theirs)) == 1:
            theirs = theirs[0]
        if _normalised(theirs) != _normalised(ours):
            raise ValueError(
                f"unsupported diffusers UNet2DModel setting {key}={theirs!r}; "
                f"our UNet can only build {key}={ours!r} here"
            )
    return config
