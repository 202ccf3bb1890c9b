"""The UNet noise predictor: `UNet` (its settings, `UNetConfig` and the presets, are in `unet_config.py`).

The architecture is the DDPM / ADM family (Ho et al. 2020; Dhariwal & Nichol 2021): a stack of
resolution levels, each with residual blocks (optionally followed by self-attention) and a
resampler, a middle block, and a mirrored decoder that concatenates the encoder's activations. The
model sees only noisy images, timesteps and (optionally) class labels; it never sees the schedule.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..io.weights import load_checked, load_weights, read_model_config, save_model
from .blocks import Attention, Downsample, GroupNorm, Resample, ResBlock, Upsample
from .embeddings import TimestepMLP, timestep_embedding
from .unet_config import MAX_SIDE, PRESETS, UNetConfig, preset  # noqa: F401 (re-exported: public names)

# w is embedded as a timestep w x this: the distilled range (about 1 to 4) then spans the timesteps' frequencies.
GUIDANCE_EMBED_SCALE = 1000.0


def _guidance_mlp(in_dim: int, out_dim: int) -> TimestepMLP:
    """The guidance scale's embedding MLP, its last layer zero: a student made from its teacher's weights
    starts with the teacher's outputs at every w (Meng et al. 2023 add w's embedding to the time embedding)."""
    mlp = TimestepMLP(in_dim, out_dim)
    nn.init.zeros_(mlp.linear_2.weight)
    nn.init.zeros_(mlp.linear_2.bias)
    return mlp


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
        # Last, so that the other modules draw the same initial weights with it or without it.
        self.guidance_embed = _guidance_mlp(c.base_channels, emb_dim) if c.guidance_embedding else None

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
        guidance_scale: torch.Tensor | float | None = None,
    ) -> torch.Tensor:
        """Predict for a batch.

        Args:
            sample: noisy images ``(b, in_channels, h, w)``.
            timesteps: ``(b,)`` or a scalar shared by the batch; integers or floats.
            class_labels: ``(b,)`` int64 labels in ``[0, num_classes]``, where ``num_classes`` is the
                "null" label of classifier-free guidance. None means the null label. Only for
                class-conditional models.
            guidance_scale: ``(b,)`` or a scalar: the classifier-free guidance scale w whose guided prediction
                a guidance-distilled model (``guidance_embedding``) gives in one pass; None means 1 (the
                conditional prediction). Only for such models.

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
        if self.guidance_embed is not None:
            w = torch.as_tensor(1.0 if guidance_scale is None else guidance_scale, device=sample.device)
            w_emb = timestep_embedding(w.float().expand(sample.shape[0]) * GUIDANCE_EMBED_SCALE, c.base_channels)
            emb = emb + self.guidance_embed(w_emb.to(emb.dtype))
        elif guidance_scale is not None:
            raise ValueError("guidance_scale was given but the model has no guidance embedding")

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
