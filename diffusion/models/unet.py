"""The UNet noise predictor: `UNetConfig`, `UNet` and the named presets.

The architecture is the DDPM / ADM family (Ho et al. 2020; Dhariwal & Nichol 2021): a stack of
resolution levels, each with residual blocks (optionally followed by self-attention) and a
resampler, a middle block, and a mirrored decoder that concatenates the encoder's activations. The
model sees only noisy images, timesteps and (optionally) class labels; it never sees the schedule.
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import ConfigTypeError, check_types, config_from_dict, config_to_dict, validate_literals
from ..io.weights import load_checked, load_weights, read_model_config, save_model
from .blocks import Attention, Downsample, GroupNorm, Resample, ResBlock, Upsample
from .embeddings import TimestepMLP, timestep_embedding

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
        return config_to_dict(self)

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


class Level(nn.Module):
    """One resolution level: residual blocks, each optionally followed by attention, then a resampler."""

    def __init__(self, res: list[ResBlock], attn: list[Attention], resampler: nn.Module | None) -> None:
        super().__init__()
        self.res = nn.ModuleList(res)
        self.attn = nn.ModuleList(attn)  # empty, or one per residual block
        self.resampler = resampler

    def blocks(self) -> list[tuple[ResBlock, nn.Module]]:
        attn = list(self.attn) or [nn.Identity()] * len(self.res)
        return list(zip(self.res, attn, strict=True))

    def resample(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Apply the level's resampler (a strided conv, an upsampling conv, or a resampling ResBlock)."""
        if isinstance(self.resampler, ResBlock):
            return self.resampler(x, emb)
        return self.resampler(x)


class Middle(nn.Module):
    """The bottleneck: residual block, optional attention, residual block."""

    def __init__(self, res1: ResBlock, attn: Attention | None, res2: ResBlock) -> None:
        super().__init__()
        self.res1 = res1
        self.attn = attn
        self.res2 = res2

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.res1(x, emb)
        if self.attn is not None:
            x = self.attn(x)
        return self.res2(x, emb)


@dataclass(frozen=True)
class _Blocks:
    """Makes the residual and attention blocks of one `UNetConfig`, conditioned on ``emb_dim`` features."""

    config: UNetConfig
    emb_dim: int

    def res(self, in_channels: int, out_channels: int, resample: Resample = "none") -> ResBlock:
        c = self.config
        return ResBlock(
            in_channels,
            out_channels,
            emb_dim=self.emb_dim,
            dropout=c.dropout,
            norm_groups=c.norm_groups,
            norm_eps=c.norm_eps,
            time_conditioning=c.time_conditioning,
            resample=resample,
        )

    def attention(self, channels: int) -> Attention:
        c = self.config
        return Attention(channels, num_heads=c.heads_for(channels), norm_groups=c.norm_groups, norm_eps=c.norm_eps)


def _encoder(c: UNetConfig, blocks: _Blocks) -> tuple[list[Level], list[int]]:
    """The encoder's levels, finest first, and the channels of every activation the decoder concatenates."""
    ch = c.base_channels * c.channel_mult[0]
    skips = [ch]  # conv_in's output first, then in push order
    levels = []
    for level, mult in enumerate(c.channel_mult):
        out, res, attn = c.base_channels * mult, [], []
        for _ in range(c.num_res_blocks):
            res.append(blocks.res(ch, out))
            attn += [blocks.attention(out)] if level in c.attention_levels else []
            ch = out
            skips.append(ch)
        resampler = None
        if level != len(c.channel_mult) - 1:
            resampler = (
                blocks.res(ch, ch, resample="down")
                if c.resample == "resblock"
                else Downsample(ch, padding=c.downsample_padding)
            )
            skips.append(ch)
        levels.append(Level(res, attn, resampler))
    return levels, skips


def _decoder(c: UNetConfig, blocks: _Blocks, skips: list[int]) -> list[Level]:
    """The decoder's levels, finest first (made coarsest first); each residual block pops one of ``skips``."""
    ch = c.base_channels * c.channel_mult[-1]
    levels: list[Level] = []
    for level, mult in reversed(list(enumerate(c.channel_mult))):
        out, res, attn = c.base_channels * mult, [], []
        for _ in range(c.num_res_blocks + 1):
            res.append(blocks.res(ch + skips.pop(), out))
            attn += [blocks.attention(out)] if level in c.attention_levels else []
            ch = out
        resampler = None
        if level != 0:
            resampler = blocks.res(ch, ch, resample="up") if c.resample == "resblock" else Upsample(ch)
        levels.insert(0, Level(res, attn, resampler))
    assert not skips, "every encoder activation must be consumed by the decoder"
    return levels


class UNet(nn.Module):
    """Predicts the noise (or v, or x0) in a noisy image batch.

    ``forward(sample, timesteps, class_labels=None)`` maps ``(b, c, h, w)`` and timesteps ``(b,)`` to a
    tensor of shape ``(b, out_channels, h, w)``. Any ``h`` and ``w`` divisible by
    ``config.downsample_factor`` work, square or not.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        emb_dim = c.time_embed_dim or 4 * c.base_channels
        blocks = _Blocks(c, emb_dim)
        finest, coarsest = c.base_channels * c.channel_mult[0], c.base_channels * c.channel_mult[-1]
        # The order below is the order the modules draw their initial weights in, and the state dict's order.
        self.time_embed = TimestepMLP(c.base_channels, emb_dim)
        self.class_embed = nn.Embedding(c.num_classes + 1, emb_dim) if c.num_classes else None
        self.conv_in = nn.Conv2d(c.in_channels, finest, 3, padding=1)
        down, skips = _encoder(c, blocks)
        self.down = nn.ModuleList(down)
        self.mid = Middle(
            blocks.res(coarsest, coarsest),
            blocks.attention(coarsest) if c.mid_attention else None,
            blocks.res(coarsest, coarsest),
        )
        self.up = nn.ModuleList(_decoder(c, blocks, skips))  # indexed by level, finest first, like self.down
        self.norm_out = GroupNorm(c.norm_groups, finest, eps=c.norm_eps)
        self.gradient_checkpointing = False  # recompute block activations in backward (training memory)
        self.conv_out = nn.Conv2d(finest, c.out_channels or c.in_channels, 3, padding=1)

    def check_input(self, sample: torch.Tensor, timesteps: torch.Tensor) -> None:
        """Raise ``ValueError`` for an input this model cannot take, naming what was expected."""
        c = self.config
        if sample.ndim != 4:
            raise ValueError(f"sample must have shape (batch, channels, height, width), got {tuple(sample.shape)}")
        if sample.shape[1] != c.in_channels:
            raise ValueError(f"sample has {sample.shape[1]} channels but the model expects {c.in_channels}")
        height, width = sample.shape[-2:]
        if height % c.downsample_factor or width % c.downsample_factor:
            raise ValueError(
                f"image size {height}x{width} is not divisible by the model's downsampling factor "
                f"{c.downsample_factor}; use sides that are multiples of {c.downsample_factor}"
            )
        if timesteps.ndim > 1 or (timesteps.ndim == 1 and timesteps.shape[0] != sample.shape[0]):
            raise ValueError(
                f"timesteps must have shape ({sample.shape[0]},) or be a scalar, got {tuple(timesteps.shape)}"
            )

    def forward(
        self,
        sample: torch.Tensor,
        timesteps: torch.Tensor | float,
        class_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict for a batch.

        Args:
            sample: noisy images ``(b, in_channels, h, w)``.
            timesteps: ``(b,)`` or a scalar shared by the batch; integers or floats.
            class_labels: ``(b,)`` int64 labels in ``[0, num_classes]``, where ``num_classes`` is the
                "null" label of classifier-free guidance. None means the null label. Only for
                class-conditional models.

        Returns:
            ``(b, out_channels, h, w)`` in the sample's dtype.
        """
        timesteps = torch.as_tensor(timesteps, device=sample.device)
        self.check_input(sample, timesteps)
        timesteps = timesteps.expand(sample.shape[0])  # (b,)

        c = self.config
        t_emb = timestep_embedding(timesteps, c.base_channels, c.flip_sin_to_cos, c.freq_shift)
        emb = self.time_embed(t_emb.to(self.conv_in.weight.dtype))  # (b, emb_dim)
        if self.class_embed is not None:
            if class_labels is None:
                class_labels = torch.full_like(timesteps, c.num_classes, dtype=torch.long)
            emb = emb + self.class_embed(class_labels)
        elif class_labels is not None:
            raise ValueError("class_labels were given but the model is unconditional (num_classes is None)")

        def run(block: nn.Module, *args: torch.Tensor) -> torch.Tensor:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                return checkpoint(block, *args, use_reentrant=False)
            return block(*args)

        h = self.conv_in(sample)
        skips = [h]
        for level in self.down:
            for res, attn in level.blocks():
                h = run(attn, run(res, h, emb))
                skips.append(h)
            if level.resampler is not None:
                h = level.resample(h, emb)
                skips.append(h)

        h = run(self.mid, h, emb)

        for level in reversed(self.up):
            for res, attn in level.blocks():
                h = run(attn, run(res, torch.cat([h, skips.pop()], dim=1), emb))  # (b, c + c_skip, h, w) in
            if level.resampler is not None:
                h = level.resample(h, emb)

        return self.conv_out(nn.functional.silu(self.norm_out(h)))

    # ----- persistence: config.json + model.safetensors, no pickle -----

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` (atomically) into ``directory``."""
        save_model(self, directory, "UNet", self.config.to_dict())

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "UNet":
        """Load a model written by `save_pretrained`; never executes code from the files."""
        model = cls(UNetConfig.from_dict(read_model_config(directory, "UNet", "model")))
        load_weights(model, directory, "model")
        return model

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Load a state dict, refusing missing, unexpected or wrongly shaped tensors by name."""
        load_checked(self, state, "model")
