"""A distillation run (``train.py --distill-from TEACHER``): what `Trainer` adds to train a few-step student.

Progressive distillation (Salimans & Ho 2022) in rounds: the student of each round takes one DDIM step where
its teacher takes two (`distill.distillation_loss`). The first round's teacher is the model distilled; for a
class-conditional one it is guided by classifier-free guidance at a w drawn per image from the distilled
range, and the student takes that w as an input (`UNetConfig.guidance_embedding`, Meng et al. 2023), so one
forward pass gives the guided prediction. Each later round's teacher is the round before's student. The
student predicts v, starts as a copy of the teacher's weights and samples with `DDIMScheduler` as it is
(trailing timesteps, η = 0) at its round's step count.

The rounds share the run's steps equally (`Rounds`), so the run's length is fixed once it starts. When a round
begins, the EMA weights of the round before are written as ``OUT/rounds/steps-N`` (a model folder that samples
with N steps), become the frozen teacher, and the student and its EMA restart from them; AdamW's moments carry
on, and the learning-rate schedule starts again. A resumed run reads its teacher from that folder, so it
continues bit for bit. The final model keeps the last round's student and those of ``--distill-keep-steps``
steps or fewer.

Consistency distillation (``--distill-method consistency``; Song et al. 2023, "Consistency Models", Algorithm 2)
is one round over the whole run: the student learns f(z_t, t) = α_t z_t - σ_t v̂ that maps each of the
``--distill-levels`` levels of the teacher's ODE to its clean image (`Distillation.consistency_loss`), and
samples with `ConsistencyScheduler` at any step count.

A student copies its teacher's weights, guidance embedding aside; reading its output as v, it starts from the
teacher's predictions only for a v-predicting teacher, and the first round teaches an ε teacher's copy v.
"""

import bisect
import contextlib
import dataclasses
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..guidance import classifier_free_guidance
from ..io.sampling_record import SamplingRecord
from ..models import UNet
from ..pipeline import DiffusionPipeline
from ..schedulers import ConsistencyScheduler, DDIMScheduler, NoiseSchedule, SchedulerConfig, get_scheduler
from ..schedulers.base import trailing_timesteps
from ..schedulers.schedule import pred_original_sample
from .config import TrainConfig, consistency_steps, kept_steps, lr_factor, nested, round_steps, scheduler_config
from .distill import Predictor, ddim_step, distillation_loss, noise_level
from .ema import EMA
from .loss import drop_labels
from .processes import on_main

if TYPE_CHECKING:
    from .trainer import Trainer

ROUNDS = "rounds"  # OUT/rounds/steps-N: the student of each finished round, a model folder
METHOD = "progressive"
CONSISTENCY = "consistency"


def open_teacher(config: TrainConfig, device: torch.device) -> DiffusionPipeline:
    """The model ``--distill-from`` names, in float32 on ``device``, its weights frozen."""
    teacher = DiffusionPipeline.from_pretrained(config.distill_from).to(device)
    if teacher.sampling is not None:
        raise ValueError(
            f"{config.distill_from} is already a distilled model ({teacher.sampling.method}, steps "
            f"{', '.join(map(str, teacher.sampling.steps))}): distil the model it was distilled from, with "
            "--distill-end-steps for fewer steps"
        )
    teacher.unet.requires_grad_(False)
    return teacher


def check_teacher_classes(teacher: DiffusionPipeline, class_names: list[str]) -> None:
    """Refuse data whose classes are not the teacher's (the student's label i must mean the teacher's)."""
    expected = teacher.class_names or None
    if len(class_names) != teacher.unet.config.num_classes or (expected and class_names != expected):
        theirs = ", ".join(expected) if expected else f"{teacher.unet.config.num_classes} classes"
        raise ValueError(
            f"the data's classes ({', '.join(class_names)}) are not the teacher's ({theirs}): distil on the data "
            "the teacher was trained on"
        )


def student_settings(config: TrainConfig, teacher: DiffusionPipeline) -> TrainConfig:
    """``config`` with what the student takes from its teacher (`config.FROM_TEACHER`): image format and size,
    classes and noise schedule; it predicts v, as a student whose first step starts from pure noise must."""
    schedule, unet = teacher.scheduler.config, teacher.unet.config
    default = SchedulerConfig()
    if (schedule.beta_start, schedule.beta_end) != (default.beta_start, default.beta_end):
        raise ValueError(
            f"the teacher's noise schedule has beta_start {schedule.beta_start} and beta_end {schedule.beta_end}; "
            f"distillation trains on the default {default.beta_start} and {default.beta_end} only"
        )
    if unet.in_channels not in (1, 3, 4):
        raise ValueError(f"the teacher has {unet.in_channels} image channels; distillation trains 1, 3 or 4")
    return dataclasses.replace(
        config,
        image_size=unet.sample_size,
        channels=unet.in_channels,
        background=teacher.background,
        class_cond=unet.num_classes is not None,
        prediction_type="v_prediction",
        num_train_timesteps=schedule.num_train_timesteps,
        beta_schedule=schedule.beta_schedule,
        zero_terminal_snr=schedule.rescale_betas_zero_snr,
    )


def student_scheduler(config: TrainConfig) -> DDIMScheduler | ConsistencyScheduler:
    """How a student of ``config``'s run samples: DDIM, trailing timesteps, η = 0, ᾱ = 1 after the last step; a
    consistency student with multistep consistency sampling on trailing timesteps."""
    schedule = scheduler_config(config).to_dict()  # the run's noise schedule, trailing timesteps
    if config.distill_method == CONSISTENCY:
        return get_scheduler(CONSISTENCY, schedule)
    return get_scheduler("ddim", schedule | {"eta": 0.0, "set_alpha_to_one": True})


def teacher_x0(unet: UNet, prediction_type: str, schedule: NoiseSchedule, w: torch.Tensor | None) -> Predictor:
    """The teacher's x̂_0 at each image's guidance scale ``w`` ``(b,)`` (None: unguided): one pass of a model
    that takes w, else both branches of classifier-free guidance in one batch."""

    def predict(z: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if unet.config.guidance_embedding:
            out = unet(z, t, labels, guidance_scale=w).float()
        elif labels is None or w is None:
            out = unet(z, t, labels).float()
        else:
            null = torch.full_like(labels, unet.config.num_classes)
            both = unet(torch.cat([z, z]), torch.cat([t, t]), torch.cat([null, labels])).float()  # (2b, c, h, w)
            uncond, cond = both.chunk(2)
            out = classifier_free_guidance(uncond, cond, w.reshape(-1, 1, 1, 1))  # w per image
        alpha, sigma = noise_level(schedule, t, out)
        return pred_original_sample(out, z.float(), alpha, sigma, prediction_type)

    return predict


@dataclasses.dataclass(frozen=True)
class Rounds:
    """The rounds of a run of ``total`` steps: each one's student step count, and where each begins."""

    steps: tuple[int, ...]  # student steps per round, halving: 32, 16, ..., 1
    total: int

    @classmethod
    def of(cls, config: TrainConfig, total: int) -> "Rounds":
        if config.distill_method == CONSISTENCY:  # one round over the whole run, its grids at the default steps
            return cls((max(consistency_steps(config)),), total)
        steps = round_steps(config)
        if total < len(steps):
            raise ValueError(
                f"a run of {total} steps cannot hold the {len(steps)} distillation rounds: raise --max-steps"
            )
        T = config.num_train_timesteps
        for n in steps[1:]:  # a round's teacher is queried where it was trained: its own levels must nest
            if not nested(T, 2 * n, n):
                raise ValueError(
                    f"the timesteps of {2 * n} and {n} steps of the teacher's {T} do not nest, so a round's teacher "
                    "would be asked for levels it never trained on: use --distill-start-steps and --distill-end-steps "
                    f"that divide {T} evenly, e.g. powers of 2 up to {2 ** int(np.log2(T // 2))}"
                )
        return cls(tuple(steps), total)

    @property
    def starts(self) -> list[int]:
        """The first step (0-based) of each round: the run's steps shared equally."""
        return [r * self.total // len(self.steps) for r in range(len(self.steps))]

    def index(self, step: int) -> int:
        """The round of 0-based step ``step``."""
        return bisect.bisect_right(self.starts, step) - 1

    def lr_factor(self, step: int, config: TrainConfig) -> float:
        """The learning-rate schedule (warmup, then constant or cosine) of each round on its own."""
        r = self.index(step)
        end = self.starts[r + 1] if r + 1 < len(self.steps) else self.total
        return lr_factor(step - self.starts[r], config, end - self.starts[r])


class Distillation:
    """The teacher, the rounds and the objective of a distillation run; `Trainer` calls `before_step`, `loss`,
    `pipeline` and `final_pipeline` where an ordinary run trains and writes its model."""

    def __init__(self, teacher: DiffusionPipeline, config: TrainConfig, total: int, out: Path) -> None:
        self.config, self.out = config, out
        self.rounds = Rounds.of(config, total)
        self.class_names, self.background = teacher.class_names, teacher.background
        self.null = teacher.unet.config.num_classes  # None: an unconditional teacher, unguided
        self.teacher, self.teacher_type = teacher.unet.eval(), teacher.scheduler.config.prediction_type
        self.round = 0  # the round whose teacher is loaded
        self.consistency = config.distill_method == CONSISTENCY
        T, K = config.num_train_timesteps, config.distill_levels
        # consistency: the K levels, noisiest first, then -1 (the clean image), (K + 1,)
        self.levels = torch.from_numpy(np.append(trailing_timesteps(T, K), -1)) if self.consistency else None
        self.autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext

    @property
    def guided(self) -> bool:
        return self.null is not None

    def before_step(self, trainer: "Trainer", step: int) -> None:
        """Load the teacher of ``step``'s round; at a round's first step, write the student of the round before
        (its EMA weights) and restart the student and its EMA from them first."""
        r = self.rounds.index(step)
        if r == self.round:
            return
        finished = self.rounds.steps[r - 1]
        acc = trainer.accelerator
        if step == self.rounds.starts[r]:
            on_main(acc, lambda: self.write_round(trainer.ema_unet(), finished))
            trainer.ema.copy_to(acc.unwrap_model(trainer.model))
            trainer.ema = EMA(acc.unwrap_model(trainer.model), trainer.config.ema_decay)
        self._check_rounds(r)
        folder = self.out / ROUNDS / f"steps-{finished}"
        self.teacher = UNet.from_pretrained(folder / "unet").to(acc.device).eval().requires_grad_(False)
        self.teacher_type, self.round = "v_prediction", r

    def loss(
        self,
        forward: Callable[..., torch.Tensor],
        schedule: NoiseSchedule,
        x0: torch.Tensor,
        labels: torch.Tensor | None,
        generator: torch.Generator,
        step: int,
    ) -> torch.Tensor:
        """The objective of 0-based ``step`` for images ``x0`` (label dropout, then w, then the draws of
        `distillation_loss` or `consistency_loss`, all from ``generator``)."""
        c, draws = self.config, {"generator": generator, "device": generator.device}
        w = None
        if labels is not None:
            labels = drop_labels(labels, self.null, c.cond_drop_prob, generator).to(x0.device)
        if self.guided:
            low, high = c.distill_guidance_min, c.distill_guidance_max
            w = (low + (high - low) * torch.rand(x0.shape[0], **draws)).to(x0.device)  # (b,)
        predict = teacher_x0(self.teacher, self.teacher_type, schedule, w)

        def teacher(z: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
            with self.autocast():
                return predict(z, t, y)

        def student(z: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
            return forward(z, t, y, guidance_scale=w) if self.guided else forward(z, t, y)

        if self.consistency:
            return self.consistency_loss(student, teacher, schedule, x0, labels, generator)
        steps = self.rounds.steps[self.rounds.index(step)]
        return distillation_loss(student, c.prediction_type, teacher, schedule, x0, labels, generator, steps)

    def consistency_loss(
        self,
        student: Predictor,
        teacher: Predictor,
        schedule: NoiseSchedule,
        x0: torch.Tensor,
        labels: torch.Tensor | None,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Consistency distillation (Song et al. 2023, Algorithm 2) with θ⁻ = stopgrad(θ), μ = 0 (Song & Dhariwal
        2023, "Improved Techniques for Training Consistency Models"): ε, then each image's pair of adjacent levels,
        from ``generator``; the MSE in x-space between f_θ(z_t, t) and f_θ⁻(ẑ_s, s), ẑ_s the teacher's DDIM step."""
        b, draws = x0.shape[0], {"generator": generator, "device": generator.device}
        noise = torch.randn(x0.shape, **draws).to(x0.device)  # ε, (b, c, h, w)
        n = torch.randint(0, len(self.levels) - 1, (b,), **draws).to(x0.device)  # each image's pair
        levels = self.levels.to(x0.device)
        t, s = levels[n], levels[n + 1]  # t > s, (b,); s = -1: the clean image
        t_level, s_level = noise_level(schedule, t, x0), noise_level(schedule, s, x0)
        z_t = t_level[0] * x0 + t_level[1] * noise  # q(z_t | x), Ho et al. 2020, eq. 4

        def f(z: torch.Tensor, level: torch.Tensor, alpha_sigma: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            # f(z, t) = x̂_0 of the student's output: α_t z - σ_t v̂ for v (Salimans & Ho 2022, sec. 4)
            out = student(z, level, labels).float()
            return pred_original_sample(out, z.float(), *alpha_sigma, self.config.prediction_type)

        with torch.no_grad():
            z_s = ddim_step(teacher(z_t, t, labels), z_t, t_level, s_level)  # the ODE solver Φ: a DDIM step, η = 0
            at_s = f(z_s, s.clamp(min=0), noise_level(schedule, s.clamp(min=0), x0))
            target = torch.where((s < 0).reshape(-1, 1, 1, 1), z_s, at_s)  # f(x, -1) = x: the boundary condition
        return (f(z_t, t, t_level) - target.float()).square().mean()

    def _check_rounds(self, r: int) -> None:
        """Refuse to go on in round ``r`` without the folders of the rounds before it that the run still needs:
        the teacher's, and those the final model keeps."""
        kept, folders = kept_steps(self.config), self.out / ROUNDS
        needed = [n for n in self.rounds.steps[:r] if n in kept or n == self.rounds.steps[r - 1]]
        missing = [folders / f"steps-{n}" for n in needed if not (folders / f"steps-{n}" / "unet").is_dir()]
        if missing:
            raise FileNotFoundError(
                f"{missing[0]} is missing: it holds a finished round's student, which this run needs; resume from a "
                f"checkpoint of {self.out / 'checkpoints'} written before that round ended (move the later ones "
                "aside), or start over with --resume never"
            )

    # ----- the students as model folders -----

    def pipeline(self, unets: dict[int, UNet], default: int) -> DiffusionPipeline:
        """The students ``unets`` (step count -> UNet) as one model that samples with ``default`` steps."""
        guidance = (self.config.distill_guidance_min, self.config.distill_guidance_max) if self.guided else None
        if self.consistency:  # one student for any step count
            steps = consistency_steps(self.config)
            record = SamplingRecord(CONSISTENCY, steps, max(steps), guidance)
        else:
            record = SamplingRecord(METHOD, tuple(sorted(unets)), default, guidance)
        others = {n: unet for n, unet in unets.items() if n != default}
        scheduler = student_scheduler(self.config)
        return DiffusionPipeline(
            unets[default], scheduler, self.class_names, self.background, sampling=record, step_unets=others
        )

    def write_round(self, unet: UNet, steps: int) -> None:
        """``OUT/rounds/steps-N``, written whole under a temporary name first."""
        final = self.out / ROUNDS / f"steps-{steps}"
        tmp, old = final.with_name(f".tmp-steps-{steps}"), final.with_name(f".old-steps-{steps}")
        shutil.rmtree(tmp, ignore_errors=True)
        self.pipeline({steps: unet}, steps).save_pretrained(tmp)
        if final.exists():  # a round written again after a resume: set aside until the new one is in place
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)

    def final_pipeline(self, trainer: "Trainer") -> DiffusionPipeline:
        """The students of ``--distill-keep-steps`` and fewer: the last round's EMA weights, the others read
        from ``OUT/rounds``; the largest kept is the default. A consistency run: its student's EMA weights."""
        last = self.rounds.steps[-1]
        if self.consistency:
            return self.pipeline({last: trainer.ema_unet()}, last)
        unets = {
            n: UNet.from_pretrained(self.out / ROUNDS / f"steps-{n}" / "unet") for n in kept_steps(self.config)[1:]
        }
        return self.pipeline(unets | {last: trainer.ema_unet()}, max(unets, default=last))
