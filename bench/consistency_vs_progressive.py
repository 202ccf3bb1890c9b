"""Consistency distillation against progressive distillation of the shipped class-conditional model, at an
equal CPU budget.

    python bench/consistency_vs_progressive.py --data data/fashion-mnist --work runs/cd-vs-pd --minutes 15 \
        --method consistency|progressive|table [--threads 1] [--per-class 100] [--steps N]

``--method consistency`` trains a consistency-distilled student (Song et al. 2023, "Consistency Models",
Algorithm 2) of --teacher for --minutes of wall time (the clock is read after each step): the student is the
teacher's UNet with a guidance embedding, initialised from the teacher's weights, predicting v; its
consistency function is f(z, t, w) = α_t z - σ_t v̂ (the VP form, ≈ z at t = 0). The K = --levels noise
levels are the teacher's trailing DDIM timesteps and -1, the clean image, where f is the identity (the
boundary condition, exactly): each image draws one pair of adjacent levels t > s, the guided teacher
(classifier-free guidance at a w drawn per image in [1, 2]) takes one DDIM step (η = 0) from z_t to ẑ_s, and
f_θ(z_t, t, w) learns f_θ⁻(ẑ_s, s, w), θ⁻ the EMA of θ (decay --target-decay); at s = -1 the target is ẑ_s.
It writes WORK/consistency/unet, the EMA of θ at --ema-decay (not θ⁻), and run.json (steps, seconds).

``--method progressive`` runs the library's trainer (``train.py --distill-from``, Salimans & Ho 2022) for
--steps steps (default: --minutes at --seconds-per-step) into WORK/progressive, and writes its run.json.

``--method table`` samples both students at 1, 2 and 4 steps at w = 1.5 (N = 10 x --per-class images, image
i from seed i, classes in blocks; the consistency student with multistep consistency sampling, Algorithm 1,
one forward pass per step; the progressive one with its own pipeline) and prints FD@N, KID@N and class
agreement as bench/few_step.py measures them (the shipped classifier), with each run's steps and minutes.
Samples are cached in WORK/samples.
"""

import argparse
import copy
import dataclasses
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from class_conditional import judging, real_images

from diffusion.data import ImageFolder, to_unit
from diffusion.metrics import extract_features
from diffusion.metrics.classifier import Classifier
from diffusion.models import UNet
from diffusion.pipeline import DEFAULT_GUIDANCE_SCALE, DiffusionPipeline
from diffusion.rng import generators, randn_tensor
from diffusion.schedulers import NoiseSchedule
from diffusion.schedulers.base import trailing_timesteps
from diffusion.schedulers.schedule import pred_original_sample
from diffusion.training import TrainConfig
from diffusion.training.distill import ddim_step, noise_level
from diffusion.training.distill_run import check_teacher_classes, open_teacher, student_settings, teacher_x0
from diffusion.training.ema import EMA
from diffusion.training.loss import drop_labels

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("consistency", "progressive")
SAMPLE_STEPS = (1, 2, 4)

# f(z_t, t, labels, w) -> x̂_0 (b, c, h, w) float32: a consistency function
ConsistencyFunction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | float], torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Settings:
    """A consistency-distillation run; each field is also a flag."""

    levels: int = 64  # K: the teacher's trailing DDIM timesteps used as noise levels (and -1, the clean image)
    lr: float = 2e-4  # AdamW learning rate, constant
    target_decay: float = 0.95  # μ: EMA decay of the target network θ⁻ (Song et al. 2023, Algorithm 2)
    ema_decay: float = 0.999  # EMA of θ that is saved and sampled
    huber_c: float = 0.0  # 0: mean squared error in x-space; else pseudo-Huber with this c
    cond_drop_prob: float = 0.1  # chance a label becomes the null class
    guidance_min: float = 1.0  # w is drawn per image uniformly in [min, max]
    guidance_max: float = 2.0
    batch_size: int = 64
    grad_clip: float = 1.0  # global gradient-norm clip, as the trainer's default
    seed: int = 0  # data order, then every draw of the objective


def consistency_function(unet: UNet, schedule: NoiseSchedule) -> ConsistencyFunction:
    """f(z, t, w) = x̂_0 = α_t z - σ_t v̂ of a v-predicting, guidance-embedded ``unet`` (Salimans & Ho 2022,
    sec. 4): the VP form of Song et al. 2023's parameterisation, ≈ z at t = 0 (α_0 ≈ 1, σ_0 ≈ 0.01)."""
    dtype = next(unet.parameters()).dtype

    def f(z: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, w: torch.Tensor | float) -> torch.Tensor:
        v = unet(z.to(dtype), t, labels, guidance_scale=w).float()  # (b, c, h, w)
        alpha, sigma = noise_level(schedule, t, v)
        return pred_original_sample(v, z.float(), alpha, sigma, "v_prediction")

    return f


def distance(x: torch.Tensor, y: torch.Tensor, huber_c: float) -> torch.Tensor:
    """d(x, y) averaged over the batch: mean squared error, or with ``huber_c`` the pseudo-Huber metric
    sqrt(||x - y||² + c²) - c (Song & Dhariwal 2023, "Improved Techniques for Training Consistency Models")."""
    if not huber_c:
        return (x - y).square().mean()
    squared = (x - y).square().flatten(1).sum(dim=1)  # ||x - y||², (b,)
    return ((squared + huber_c**2).sqrt() - huber_c).mean()


class ConsistencyDistillation:
    """The student, its target θ⁻, its EMA, AdamW and the objective of consistency distillation."""

    def __init__(self, teacher: DiffusionPipeline, settings: Settings) -> None:
        s = self.settings = settings
        self.teacher = teacher.unet.eval().requires_grad_(False)
        self.teacher_type = teacher.scheduler.config.prediction_type  # the teacher's own: ε for the shipped model
        self.schedule = NoiseSchedule(teacher.scheduler.config)
        self.null = teacher.unet.config.num_classes
        T = self.schedule.num_train_timesteps
        self.levels = torch.from_numpy(np.append(trailing_timesteps(T, s.levels), -1))  # (K + 1,), noisiest first
        self.student = UNet(dataclasses.replace(teacher.unet.config, guidance_embedding=True))
        missing, unexpected = self.student.load_state_dict(teacher.unet.state_dict(), strict=False)
        assert not unexpected and all(k.startswith("guidance_embed.") for k in missing), (missing, unexpected)
        self.target = copy.deepcopy(self.student).eval().requires_grad_(False)  # θ⁻
        self.target_ema, self.ema = EMA(self.student, s.target_decay), EMA(self.student, s.ema_decay)
        self.optimizer = torch.optim.AdamW(self.student.parameters(), lr=s.lr)
        self.generator = torch.Generator().manual_seed(s.seed)

    def loss(self, x0: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Song et al. 2023, Algorithm 2, for images ``x0`` (b, c, h, w) in [-1, 1] and their labels (b,):
        label dropout, w, ε, then each image's level pair, all drawn from ``generator``."""
        s, b = self.settings, x0.shape[0]
        labels = drop_labels(labels, self.null, s.cond_drop_prob, generator)
        w = s.guidance_min + (s.guidance_max - s.guidance_min) * torch.rand(b, generator=generator)  # (b,)
        noise = torch.randn(x0.shape, generator=generator)  # ε, (b, c, h, w)
        n = torch.randint(0, len(self.levels) - 1, (b,), generator=generator)  # each image's pair
        t, below = self.levels[n], self.levels[n + 1]  # t_{n+1} > t_n, (b,); t_n = -1 is the clean image
        t_level, s_level = noise_level(self.schedule, t, x0), noise_level(self.schedule, below, x0)
        z_t = t_level[0] * x0 + t_level[1] * noise  # q(z_t | x), Ho et al. 2020, eq. 4
        with torch.no_grad():
            x0_teacher = teacher_x0(self.teacher, self.teacher_type, self.schedule, w)(z_t, t, labels)
            z_s = ddim_step(x0_teacher, z_t, t_level, s_level)  # the ODE solver Φ: one DDIM step, η = 0
            at_target = consistency_function(self.target, self.schedule)(z_s, below.clamp(min=0), labels, w)
            target = torch.where((below < 0).reshape(-1, 1, 1, 1), z_s, at_target)  # f(x, -1) = x: the boundary
        x_hat = consistency_function(self.student, self.schedule)(z_t, t, labels, w)
        return distance(x_hat, target.float(), s.huber_c)

    def step(self, x0: torch.Tensor, labels: torch.Tensor) -> float:
        """One optimiser step under bf16 autocast (weights and loss fp32), then θ⁻ and the EMA follow θ."""
        self.student.train()
        with torch.autocast("cpu", torch.bfloat16):
            loss = self.loss(x0, labels, self.generator)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.settings.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.student.parameters(), self.settings.grad_clip)
        self.optimizer.step()
        self.target_ema.update(self.student)  # θ⁻ <- μ θ⁻ + (1 - μ) θ, μ warmed up as the library's EMA does
        self.target_ema.copy_to(self.target)
        self.ema.update(self.student)
        return loss.item()

    def ema_unet(self) -> UNet:
        unet = copy.deepcopy(self.student)
        self.ema.copy_to(unet)
        return unet.eval()


@torch.no_grad()
def consistency_sample(
    f: ConsistencyFunction,
    schedule: NoiseSchedule,
    num_steps: int,
    labels: torch.Tensor,
    guidance_scale: float,
    seeds: Sequence[int],
    shape: tuple[int, int, int],
) -> torch.Tensor:
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1) at the trailing timesteps of
    ``num_steps``: x̂_0 = f(z, T - 1) from z = noise, then at each next level τ, z = α_τ x̂_0 + σ_τ ε and
    x̂_0 = f(z, τ). Image i draws its noise from its own generator (seed ``seeds[i]``); returns
    ``(b, c, h, w)`` in [-1, 1]."""
    b, gens = len(seeds), generators(seeds)
    levels = torch.from_numpy(trailing_timesteps(schedule.num_train_timesteps, num_steps))  # noisiest first
    z = randn_tensor((b, *shape), gens)  # z_{T-1} ≈ ε: α_{T-1} ≈ 0
    x = f(z, levels[0].expand(b), labels, guidance_scale).clamp(-1, 1)
    for tau in levels[1:]:
        t = tau.expand(b)
        alpha, sigma = noise_level(schedule, t, x)
        z = alpha * x + sigma * randn_tensor(x.shape, gens)  # back to level τ, fresh noise
        x = f(z, t, labels, guidance_scale).clamp(-1, 1)
    return x


# ----- the runs -----


def teacher_run(teacher: str, data: Path, out: Path) -> tuple[TrainConfig, DiffusionPipeline]:
    """The settings a student of ``teacher`` takes from it (`student_settings`), and the teacher, frozen."""
    config = TrainConfig(data=str(data), out=str(out), distill_from=teacher, class_cond=True, hflip=False)
    pipe = open_teacher(config, torch.device("cpu"))
    return student_settings(config, pipe), pipe


def batches(dataset: ImageFolder, batch_size: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless batches, epoch by epoch of a seeded shuffle: images (b, c, h, w) in [-1, 1] and labels (b,)."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(dataset), generator=generator).tolist()
        for i in range(0, len(order) - batch_size + 1, batch_size):
            batch = dataset.batch([(j, 0) for j in order[i : i + batch_size]])  # unflipped: the seed is unused
            yield to_unit(batch.images), batch.labels


def run_consistency(args: argparse.Namespace, settings: Settings) -> None:
    out = args.work / "consistency"
    config, teacher = teacher_run(args.teacher, args.data, out)
    dataset = ImageFolder(args.data, config.image_size, config.channels, hflip=False)
    check_teacher_classes(teacher, dataset.class_names)
    run = ConsistencyDistillation(teacher, settings)
    data = batches(dataset, settings.batch_size, settings.seed)
    losses, start = [], time.perf_counter()
    while time.perf_counter() - start < args.minutes * 60:
        losses.append(run.step(*next(data)))
        if len(losses) % 10 == 0:
            print(f"step {len(losses)}  loss {np.mean(losses[-10:]):.5f}  {time.perf_counter() - start:.0f} s")
    seconds = time.perf_counter() - start
    run.ema_unet().save_pretrained(out / "unet")
    facts = {"steps": len(losses), "seconds": seconds, "teacher": args.teacher, "saved": f"EMA {settings.ema_decay}"}
    facts |= {"settings": dataclasses.asdict(settings), "losses": losses}
    (out / "run.json").write_text(json.dumps(facts, indent=1))
    print(f"{len(losses)} steps in {seconds:.0f} s -> {out / 'unet'}")


def run_progressive(args: argparse.Namespace) -> None:
    from diffusion.training import Trainer  # pulls in accelerate

    out = args.work / "progressive"
    steps = args.steps or round(args.minutes * 60 / args.seconds_per_step)
    config, _ = teacher_run(args.teacher, args.data, out)
    config = dataclasses.replace(
        config, batch_size=64, mixed_precision="bf16", lr=3e-4, lr_schedule="cosine", warmup_steps=20,
        ema_decay=0.999, sample_every=0, max_steps=steps, checkpoint_every=steps, seed=0,
        distill_start_steps=16, distill_end_steps=1, distill_keep_steps=4,
    )  # fmt: skip
    start = time.perf_counter()
    folder = Trainer(config).train(progress=True)
    seconds = time.perf_counter() - start
    facts = {"steps": steps, "seconds": seconds, "teacher": args.teacher, "model": str(folder)}
    (out / "run.json").write_text(json.dumps(facts, indent=1))
    print(f"{steps} steps in {seconds:.0f} s -> {folder}")


# ----- the table -----


def samples(method: str, steps: int, args: argparse.Namespace) -> dict:
    """``method``'s student at ``steps``: images (n, c, h, w) in [-1, 1], labels, seconds; cached."""
    path = args.work / "samples" / f"{method}-{steps}-{args.per_class}-{args.dtype}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    facts = json.loads((args.work / method / "run.json").read_text())
    start = time.perf_counter()
    if method == "progressive":
        pipe = DiffusionPipeline.from_pretrained(facts["model"], dtype=dtype)
        labels = [c for c in range(pipe.unet.config.num_classes) for _ in range(args.per_class)]
        images = pipe(
            len(labels), steps, class_labels=labels, guidance_scale=DEFAULT_GUIDANCE_SCALE, seed=0,
            batch_size=args.sample_batch_size, output_type="tensor",
        ) * 2 - 1  # fmt: skip
    else:
        teacher = DiffusionPipeline.from_pretrained(facts["teacher"])
        unet = UNet.from_pretrained(args.work / method / "unet").to(dtype).eval()
        schedule = NoiseSchedule(teacher.scheduler.config)
        f = consistency_function(unet, schedule)
        labels = [c for c in range(unet.config.num_classes) for _ in range(args.per_class)]
        shape = (unet.config.in_channels, *unet.config.sample_size)
        chunks = []
        for i in range(0, len(labels), args.sample_batch_size):
            end = min(i + args.sample_batch_size, len(labels))
            y, seeds = torch.tensor(labels[i:end]), range(i, end)  # image i from seed i
            chunks.append(consistency_sample(f, schedule, steps, y, DEFAULT_GUIDANCE_SCALE, seeds, shape))
        images = torch.cat(chunks)
    row = {"images": images.float(), "labels": torch.tensor(labels), "seconds": time.perf_counter() - start}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(row, path)
    return row


def table(args: argparse.Namespace) -> list[str]:
    classifier = Classifier.from_pretrained(args.classifier).eval()
    teacher = DiffusionPipeline.from_pretrained(args.teacher)
    assert classifier.class_names == teacher.class_names, (classifier.class_names, teacher.class_names)
    size = teacher.unet.config.sample_size
    real, _ = real_images(args.data, teacher.class_names, args.per_class, size, 7)
    scores, n = judging(classifier, extract_features(classifier, real), len(teacher.class_names)), len(real)

    def judge(images: torch.Tensor, labels: torch.Tensor) -> str:
        """agreement, worst class's, FD and KID of images in [-1, 1], as table cells."""
        agreement, worst, fd, kid = scores(images, labels)
        return f"{agreement:.1%} | {worst:.1%} | {fd:.3f} | {kid * 1e3:.2f}"

    lines = [
        f"| method | training steps | training minutes | sampling steps | agreement | worst class | FD@{n} | "
        f"KID@{n} x 10^3 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    other, other_labels = real_images(args.data, teacher.class_names, args.per_class, size, 1007)
    lines.append(f"| real images, another draw (the floor) | – | – | – | {judge(other, other_labels)} |")
    for method in METHODS:
        facts = json.loads((args.work / method / "run.json").read_text())
        for steps in SAMPLE_STEPS:
            row = samples(method, steps, args)
            cells = judge(row["images"], row["labels"])
            lines.append(f"| {method} | {facts['steps']} | {facts['seconds'] / 60:.1f} | {steps} | {cells} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the teacher's training images, a folder per class")
    parser.add_argument("--work", type=Path, required=True, help="folder for both runs and the cached samples")
    parser.add_argument("--method", choices=(*METHODS, "table"), required=True)
    parser.add_argument("--minutes", type=float, default=15.0, help="training wall time of each method")
    parser.add_argument("--teacher", default="fashion-mnist", help="the model distilled (default: shipped)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None, help="progressive: steps (default: from --minutes)")
    parser.add_argument("--seconds-per-step", type=float, default=0.93, help="progressive: one step's time")
    parser.add_argument("--per-class", type=int, default=100, help="table: images per class and row")
    parser.add_argument("--sample-batch-size", type=int, default=250, help="table: images per sampling batch")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="bf16", help="table: sampling dtype")
    parser.add_argument("--classifier", default=str(ROOT / "assets" / "fashion-mnist-classifier"))
    defaults = Settings()
    for field in dataclasses.fields(Settings):
        flag = "--" + field.name.replace("_", "-")
        parser.add_argument(flag, type=type(getattr(defaults, field.name)), default=getattr(defaults, field.name))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = Settings(**{field.name: getattr(args, field.name) for field in dataclasses.fields(Settings)})
    if args.method == "consistency":
        run_consistency(args, settings)
    elif args.method == "progressive":
        run_progressive(args)
    else:
        print("\n".join(table(args)))


if __name__ == "__main__":
    main()
