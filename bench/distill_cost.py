"""The cost of a progressive-distillation step against a plain training step, on the shipped Fashion-MNIST model.

    python bench/distill_cost.py [--batch-size 64] [--steps 10] [--student-steps 4]

Every row times forward, backward and an AdamW step of a copy of the shipped UNet under bf16 autocast
(weights and loss fp32), on the same random batch: the plain row is `training_loss` (what train.py runs),
the distillation rows `distillation_loss` with the shipped model as the teacher (its two DDIM steps without
gradient; plain, or guided at the default w as guided distillation needs) and a v-predicting student. No
peer package distils pixel models, so the plain step is the yardstick. Prints a table; record figures in
docs/benchmarks.md with the command and machine.
"""

import argparse
import copy
import platform
import statistics
import time

import torch

from diffusion import DiffusionPipeline
from diffusion.pipeline import DEFAULT_GUIDANCE_SCALE
from diffusion.schedulers import NoiseSchedule
from diffusion.training.distill import distillation_loss
from diffusion.training.loss import training_loss


def median_seconds(step, steps: int, warmup: int = 3) -> float:
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per row, after 3 warm-up steps")
    parser.add_argument("--student-steps", type=int, default=4, help="N of the distillation round")
    args = parser.parse_args()
    pipe = DiffusionPipeline.from_pretrained()
    teacher_unet = pipe.unet.eval().requires_grad_(False)
    schedule = NoiseSchedule(pipe.scheduler.config)
    x0 = torch.rand(args.batch_size, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    labels = torch.randint(0, 10, (args.batch_size,), generator=torch.Generator().manual_seed(1))

    def teacher(z, t, y):
        return schedule.pred_original_sample(teacher_unet(z, t, y).float(), z, t)

    def guided_teacher(z, t, y):  # classifier-free guidance at the default w: both branches in one batch
        both = teacher_unet(torch.cat([z, z]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, 10)])).float()
        conditional, unconditional = both.chunk(2)
        eps = unconditional + DEFAULT_GUIDANCE_SCALE * (conditional - unconditional)  # Ho & Salimans 2022, eq. 6
        return schedule.pred_original_sample(eps, z, t)

    def row(loss_of) -> float:
        student = copy.deepcopy(teacher_unet).train().requires_grad_(True)
        optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
        generator = torch.Generator().manual_seed(2)

        def step() -> None:
            with torch.autocast("cpu", torch.bfloat16):
                loss = loss_of(student, generator)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        return median_seconds(step, args.steps)

    plain = row(lambda net, g: training_loss(net, schedule, x0, labels, g, cond_drop_prob=0.1, null_label=10))
    distilled = row(
        lambda net, g: distillation_loss(net, "v_prediction", teacher, schedule, x0, labels, g, args.student_steps)
    )
    guided = row(
        lambda net, g: distillation_loss(
            net, "v_prediction", guided_teacher, schedule, x0, labels, g, args.student_steps
        )
    )
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"shipped Fashion-MNIST UNet, batch {args.batch_size}, bf16 autocast, median of {args.steps} steps\n")
    print("| step | s/step | img/s | vs plain |")
    print("|---|---:|---:|---:|")
    rows = [("plain training (training_loss)", plain), ("distillation, unguided teacher (2 evals)", distilled)]
    rows.append((f"distillation, teacher guided at w {DEFAULT_GUIDANCE_SCALE} (2 evals of 2 branches)", guided))
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3f} | {args.batch_size / seconds:.0f} | {seconds / plain:.2f}x |")


if __name__ == "__main__":
    main()
