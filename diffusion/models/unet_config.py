"""`UNetConfig`, the UNet's settings (saved as ``config.json`` beside the weights), and the named presets."""

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from ..config import ConfigTypeError, check_types, config_from_dict, config_to_dict, validate_literals

# Limits that refuse sizes no machine could hold, before anything is allocated (docs/reliability.md).
MAX_SIDE = 4096  # image side in pixels, trained or sampled
MAX_CHANNELS = 65536  # channels of any layer: one 3x3 conv at this width has 3.9e10 weights
MAX_RES_BLOCKS = 64  # residual blocks per level
MAX_CLASSES = 100_000  # classes of a class-conditional model (each has an embedding row)
# Elements of one first-level activation of a forward pass (32 GiB of float32). A forward holds dozens of
# them, so a pass over this needs terabytes: refused before it starts, while big GPU batches stay allowed.
MAX_ACTIVATION_ELEMENTS = 2**33


@dataclass(kw_only=True)
class UNetConfig:
    """Everything needed to rebuild a `UNet`; saved as ``config.json`` beside the weights."""

    in_channels: int = 3  # image channels: 1 grayscale, 3 RGB, or more
    out_channels: int | None = None  # predicted channels; None means the same as in_channels
    sample_size: tuple[int, int] = (32, 32)  # (height, width) trained at; the default sampling size
    base_channels: int = 128  # channels per unit of channel_mult
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)  # one multiplier per resolution level, finest first
    num_res_blocks: int = 2  # residual blocks per level on the way down (one more on the way up)
    attention_levels: tuple[int, ...] = (1,)  # levels with self-attention; level i is sample_size / 2**i
    mid_attention: bool = True  # self-attention between the two middle residual blocks
    num_heads: int = 1  # attention heads, used when head_channels is None
    head_channels: int | None = None  # fixed width per head (heads = channels // head_channels)
    dropout: float = 0.0  # dropout inside residual blocks
    norm_groups: int = 32  # GroupNorm groups; must divide every level's channel count
    norm_eps: float = 1e-5  # GroupNorm epsilon (the original DDPM used 1e-6)
    time_embed_dim: int | None = None  # conditioning vector width; None means 4 * base_channels
    time_conditioning: Literal["additive", "scale_shift"] = "additive"  # scale_shift is ADM's AdaGN
    resample: Literal["conv", "resblock"] = "conv"  # down/upsample by strided conv or by res blocks
    downsample_padding: Literal[0, 1] = 1  # conv downsampling: 1 pads all sides, 0 right/bottom (TF DDPM)
    flip_sin_to_cos: bool = True  # timestep embedding order [cos, sin]; the original DDPM uses False
    freq_shift: float = 0.0  # timestep embedding frequency shift; the original DDPM uses 1
    num_classes: int | None = None  # class-conditional with this many classes (+1 "null" label for CFG)
    guidance_embedding: bool = False  # takes the guidance scale w as an input (a guidance-distilled student)

    def __post_init__(self) -> None:
        check_types(self)
        validate_literals(self)
        self._check_sizes()
        self._check_sample_size()
        self._check_levels()
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")

    def _check_sizes(self) -> None:
        """Every count positive, and no layer, level or class table past its limit."""
        for name in ("in_channels", "base_channels", "num_res_blocks", "num_heads", "norm_groups"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("out_channels", "head_channels", "time_embed_dim", "num_classes"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        mult = self.channel_mult
        if not isinstance(mult, tuple | list) or any(type(m) is not int for m in mult):
            raise ConfigTypeError(f"channel_mult must be a tuple of integers, got {mult!r}")
        if not mult or min(mult) < 1:
            raise ValueError(f"channel_mult must be positive integers, got {mult!r}")
        widest = max(self.in_channels, self.out_channels or 0, self.time_embed_dim or 0)
        widest = max(widest, self.base_channels * max(self.channel_mult))
        if widest > MAX_CHANNELS:
            raise ValueError(
                f"a layer would have {widest} channels (base_channels x channel_mult, in/out_channels or "
                f"time_embed_dim); the limit is {MAX_CHANNELS}"
            )
        if self.num_res_blocks > MAX_RES_BLOCKS:
            raise ValueError(f"num_res_blocks must be at most {MAX_RES_BLOCKS}, got {self.num_res_blocks}")
        if self.num_classes is not None and self.num_classes > MAX_CLASSES:
            raise ValueError(f"num_classes must be at most {MAX_CLASSES}, got {self.num_classes}")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be > 0, got {self.norm_eps!r}")

    def _check_sample_size(self) -> None:
        """Two integer sides, each in range and divisible by the downsampling factor."""
        sizes = self.sample_size
        if not isinstance(sizes, tuple | list) or len(sizes) != 2 or any(type(s) is not int for s in sizes):
            raise ConfigTypeError(f"sample_size must be (height, width), two integers, got {sizes!r}")
        if not 1 <= min(sizes) <= max(sizes) <= MAX_SIDE:
            raise ValueError(f"sample_size must have sides in [1, {MAX_SIDE}], got {sizes!r}")
        if any(s % self.downsample_factor for s in sizes):
            raise ValueError(
                f"sample_size {self.sample_size!r} must be (height, width), each divisible by "
                f"the downsampling factor {self.downsample_factor}"
            )

    def _check_levels(self) -> None:
        """Attention levels that exist; norm groups and heads that divide the channels they split."""
        if not isinstance(self.attention_levels, tuple | list) or any(
            type(level) is not int for level in self.attention_levels
        ):
            raise ConfigTypeError(f"attention_levels must be a tuple of level indices, got {self.attention_levels!r}")
        levels = range(len(self.channel_mult))
        if any(level not in levels for level in self.attention_levels):
            raise ValueError(
                f"attention_levels {self.attention_levels!r} must be level indices in 0..{len(self.channel_mult) - 1}"
            )
        for channels in {self.base_channels * m for m in self.channel_mult}:
            if channels % self.norm_groups:
                raise ValueError(f"norm_groups={self.norm_groups} must divide every level's channels {channels}")
        attention = [self.channel_mult[level] for level in self.attention_levels]
        attention += [self.channel_mult[-1]] if self.mid_attention else []
        for channels in {self.base_channels * m for m in attention}:
            if self.head_channels is not None and channels % self.head_channels:
                raise ValueError(
                    f"head_channels={self.head_channels} must divide every attention block's channels {channels}"
                )
            if self.head_channels is None and channels % self.num_heads:
                raise ValueError(f"num_heads={self.num_heads} must divide every attention block's channels {channels}")

    @property
    def downsample_factor(self) -> int:
        """How much the coarsest level is smaller than the input; image sides must be divisible by it."""
        return 2 ** (len(self.channel_mult) - 1)

    def check_forward_size(self, rows: int, height: int, width: int, advice: str) -> None:
        """Refuse a forward pass of ``rows`` images of ``height`` x ``width`` whose first-level activations
        (``rows`` x ``base_channels * channel_mult[0]`` x height x width) would exceed `MAX_ACTIVATION_ELEMENTS`.

        Raises:
            ValueError: saying the size and the limit, followed by ``advice``.
        """
        elements = rows * self.base_channels * self.channel_mult[0] * height * width
        if elements > MAX_ACTIVATION_ELEMENTS:
            raise ValueError(
                f"a forward pass of {rows} images of {height}x{width} holds {elements * 4 / 2**30:.3g} GiB per "
                f"activation at {self.base_channels * self.channel_mult[0]} channels, over the "
                f"{MAX_ACTIVATION_ELEMENTS * 4 // 2**30} GiB limit: {advice}"
            )

    def heads_for(self, channels: int) -> int:
        """The number of attention heads at a level with ``channels`` channels."""
        return channels // self.head_channels if self.head_channels else self.num_heads

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON values; ``guidance_embedding`` only when set, so that a model without it stays
        readable by versions that predate the field."""
        data = config_to_dict(self)
        if not self.guidance_embedding:
            del data["guidance_embedding"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "UNetConfig":
        return config_from_dict(cls, data)


# Parameter counts are asserted in tests/models/test_unet.py.
PRESETS: dict[str, UNetConfig] = {
    # Ho et al. 2020, CIFAR-10 32x32: 35,746,307 parameters (= google/ddpm-cifar10-32).
    "ddpm-cifar10": UNetConfig(
        sample_size=(32, 32),
        base_channels=128,
        channel_mult=(1, 2, 2, 2),
        num_res_blocks=2,
        attention_levels=(1,),
        dropout=0.1,
        norm_eps=1e-6,
        flip_sin_to_cos=False,
        freq_shift=1.0,
        downsample_padding=0,
    ),
    # A few minutes on a CPU for 32x32 RGB: 6,472,195 parameters.
    "small": UNetConfig(
        sample_size=(32, 32),
        base_channels=64,
        channel_mult=(1, 2, 2),
        num_res_blocks=2,
        attention_levels=(2,),
        head_channels=32,
    ),
    # Seconds-per-epoch on a CPU, for 28/32-pixel grayscale data and tests: 1,112,801 parameters.
    "tiny": UNetConfig(
        in_channels=1,
        sample_size=(32, 32),
        base_channels=32,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        attention_levels=(2,),
        norm_groups=8,
        head_channels=32,
    ),
}


def preset(name: str, **overrides: Any) -> UNetConfig:
    """A copy of the named preset with ``overrides`` applied (e.g. ``in_channels=1``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown UNet preset {name!r}; expected one of {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)
