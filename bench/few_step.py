"""A distilled few-step student against its teacher: FD, KID and class agreement against forward passes.

    python bench/few_step.py --data data/fashion-mnist --cache runs/few-step \
        [--teacher fashion-mnist] [--student fashion-mnist-fast] [--per-class 200] [--rows ...] \
        [--dtype bf16] [--threads N] [--only-generate] [--time 1000] [--write-docs docs/benchmarks.md]

Every row samples --per-class images of each class (N = 10 x --per-class; image i from seed i, so every row
starts from the same noise) at the default guidance scale w = 1.5. Teacher rows (``teacher:SAMPLER:STEPS``)
use classifier-free guidance, two forward passes per evaluation in one batch; student rows (``student:STEPS``)
take w as an input, one pass per step, with the student's own sampler. The judge is the shipped
Fashion-MNIST classifier, whose penultimate layer is also the feature space of FD and KID (the protocol of
bench/class_conditional.py): agreement is the share of images it assigns to the requested class. The
reference is --per-class training images of each class; a second draw of real images is the floor.
"Passes" counts the images that went through the UNet, per image generated (a hook on its forward).

Each row's images and seconds are cached in --cache. --time N then times N images of the student at its
default steps and of the teacher at its default sampler, in this process, same dtype, both cores, one
after the other (a first batch of each untimed). --write-docs replaces the table between
``<!-- few-step -->`` and ``<!-- /few-step -->``.
"""

import argparse
import time
from pathlib import Path

import torch
from class_conditional import judging, real_images

from diffusion.metrics import extract_features
from diffusion.metrics.classifier import Classifier
from diffusion.pipeline import DEFAULT_GUIDANCE_SCALE, DiffusionPipeline

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- few-step -->", "<!-- /few-step -->"
DEFAULT_ROWS = (
    "teacher:dpmsolver++3m-sde:20",  # the teacher's default
    "teacher:ddim:100",
    "teacher:dpmsolver++2m:4",
    "teacher:dpmsolver++3m:4",
    "teacher:unipc:4",
    "teacher:dpmsolver++2m:8",
    "teacher:dpmsolver++3m:8",
    "teacher:unipc:8",
    "student:1",
    "student:2",
    "student:4",
)


def parse_row(text: str) -> tuple[str, str | None, int]:
    """``teacher:SAMPLER:STEPS`` or ``student:STEPS`` -> (model, sampler or None for its own, steps)."""
    parts = text.split(":")
    if parts[0] == "teacher" and len(parts) == 3:
        return "teacher", parts[1], int(parts[2])
    if parts[0] == "student" and len(parts) == 2:
        return "student", None, int(parts[1])
    raise SystemExit(f"bad row {text!r}: expected teacher:SAMPLER:STEPS or student:STEPS")


def counting(pipe: DiffusionPipeline) -> list[int]:
    """A one-element list that counts the images every UNet of ``pipe`` takes in (a forward hook)."""
    count = [0]
    unets = [pipe.unet, *getattr(pipe, "step_unets", {}).values()]
    for unet in unets:
        unet.register_forward_hook(lambda _m, args, _out: count.__setitem__(0, count[0] + args[0].shape[0]))
    return count


def generate(pipes: dict, row: str, per_class: int, args) -> dict:
    """The row's images ``(n, 1, h, w)`` in [0, 1], labels, passes per image and seconds; cached."""
    model = Path(args.teacher if row.startswith("teacher") else args.student).name  # rows of other models apart
    path = args.cache / f"{model}-{row.replace(':', '-')}-{per_class}-{args.dtype}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    which, sampler, steps = parse_row(row)
    pipe, count = pipes[which]
    labels = [c for c in range(pipe.unet.config.num_classes) for _ in range(per_class)]
    before, start = count[0], time.perf_counter()
    images = pipe(
        len(labels), steps, sampler, class_labels=labels, guidance_scale=DEFAULT_GUIDANCE_SCALE, seed=0,
        batch_size=args.batch_size, output_type="tensor", progress=True,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    result = {"images": images, "labels": torch.tensor(labels), "seconds": seconds}
    result["passes"] = (count[0] - before) / len(labels)
    args.cache.mkdir(parents=True, exist_ok=True)
    torch.save(result, path)
    return result


def time_both(pipes: dict, n: int, args) -> list[str]:
    """Seconds for ``n`` images: the student at its default steps, the teacher at its default sampler."""
    lines = []
    for which in ("student", "teacher"):
        pipe, _ = pipes[which]
        call = {"class_labels": "random", "guidance_scale": DEFAULT_GUIDANCE_SCALE, "batch_size": args.batch_size}
        pipe(args.batch_size, seed=10**6, output_type="tensor", **call)  # untimed: first-call costs
        start = time.perf_counter()
        pipe(n, seed=0, output_type="tensor", **call)
        seconds = time.perf_counter() - start
        steps = pipe.default_steps
        lines.append(f"| {which} ({pipe.scheduler_name()}, {steps} steps) | {n} | {seconds:.1f} | {n / seconds:.1f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="fashion-mnist", help="the model distilled (default: shipped)")
    parser.add_argument("--student", default="fashion-mnist-fast", help="the distilled model (default: shipped)")
    parser.add_argument("--classifier", default=str(ROOT / "assets" / "fashion-mnist-classifier"))
    parser.add_argument("--data", type=Path, required=True, help="the training image folder, one folder per class")
    parser.add_argument("--cache", type=Path, required=True, help="folder for each row's samples")
    parser.add_argument("--per-class", type=int, default=200, help="images per class and row (default: 200)")
    parser.add_argument("--rows", nargs="+", default=list(DEFAULT_ROWS))
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only-generate", action="store_true", help="fill the cache for --rows, print nothing")
    parser.add_argument("--time", type=int, default=0, help="also time this many images of each model")
    parser.add_argument("--write-docs", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    pipes = {}
    needed = {parse_row(row)[0] for row in args.rows} | ({"teacher", "student"} if args.time else {"teacher"})
    for which, name in (("teacher", args.teacher), ("student", args.student)):
        if which in needed:
            pipe = DiffusionPipeline.from_pretrained(name, dtype=dtype)
            pipes[which] = (pipe, counting(pipe))
    rows = {row: generate(pipes, row, args.per_class, args) for row in args.rows}
    timing = time_both(pipes, args.time, args) if args.time else []
    if args.only_generate:
        print("\n".join(timing))
        return
    print("\n".join(table(pipes["teacher"][0], rows, timing, args)))


def table(teacher: DiffusionPipeline, rows: dict, timing: list[str], args) -> list[str]:
    classifier = Classifier.from_pretrained(args.classifier).eval()
    assert classifier.class_names == teacher.class_names, (classifier.class_names, teacher.class_names)
    size = teacher.unet.config.sample_size
    real, _ = real_images(args.data, teacher.class_names, args.per_class, size, 7)
    judge = judging(classifier, extract_features(classifier, real), len(teacher.class_names))
    n = len(real)

    lines = [
        f"| model | sampler | steps | passes per image | agreement | worst class | FD@{n} | KID@{n} x 10^3 | seconds |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    other, other_labels = real_images(args.data, teacher.class_names, args.per_class, size, 1007)
    acc, worst, fd, kid = judge(other, other_labels)
    floor = f"{acc:.1%} | {worst:.1%} | {fd:.3f} | {kid * 1e3:.2f}"
    lines.append(f"| real images, another draw (the floor) | – | – | – | {floor} | – |")
    for name, row in rows.items():
        which, sampler, steps = parse_row(name)
        acc, worst, fd, kid = judge(row["images"] * 2 - 1, row["labels"])
        sampler = sampler or "ddim (its own)"
        lines.append(
            f"| {which} | {sampler} | {steps} | {row['passes']:g} | {acc:.1%} | {worst:.1%} | {fd:.3f} | "
            f"{kid * 1e3:.2f} | {row['seconds']:.0f} |"
        )
    if timing:
        lines += ["", "| model | images | seconds | images/s |", "|---|---:|---:|---:|", *timing]
    if args.write_docs:
        text = args.write_docs.read_text()
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        args.write_docs.write_text(f"{head}{BEGIN}\n" + "\n".join(lines) + f"\n{END}{tail}")
    return lines


if __name__ == "__main__":
    main()
