"""FD, KID and class agreement of a Noto Emoji run against its training minutes: one row per checkpoint.

    python bench/noto_emoji_curve.py --data data/noto-emoji --run runs/noto-emoji --work runs/noto-emoji-quality \
        [--num-images 300] [--steps 20] [--dtype fp32|bf16] [--seed 0] [--classifier-epochs 30]

Each ``RUN/checkpoints/step-N`` (its EMA weights) is measured as `bench/noto_emoji_quality.py` measures a
model, at one N for every row so that FD is comparable along the curve: --num-images samples in the test
split's class proportions, the model's sampler and guidance, FD and KID in EfficientNet-Lite0 features
against the test split, and the share of samples the agreement classifier (the quality bench's, cached in
--work, so both benches share it) assigns to the requested class, over all samples and balanced. Training
minutes are the checkpoint's own ``elapsed_s``. Samples and features are cached in --work. Prints a
Markdown table, with the training split's FD floor at the same N.
"""

import argparse
import json
from pathlib import Path

import torch
from noto_emoji_quality import (
    EXTRACTOR,
    Split,
    agreement,
    check_model,
    features,
    fingerprint,
    generate,
    train_classifier,
)

from diffusion.io.checkpoint import list_checkpoints
from diffusion.metrics import compare_features, load_feature_extractor
from diffusion.pipeline import DiffusionPipeline


def checkpoints(run: Path) -> list[Path]:
    """``run``'s complete checkpoints in step order; exits with one line when there are none."""
    found = [path for _, path in list_checkpoints(run)]
    if not found:
        raise SystemExit(f"no checkpoints in {run / 'checkpoints'}; give a training run's --out folder as --run")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with train/ and test/ category folders")
    parser.add_argument("--run", type=Path, required=True, help="a class-conditional training run's --out folder")
    parser.add_argument("--work", type=Path, required=True, help="folder for samples, features and the classifier")
    parser.add_argument("--num-images", type=int, default=300, help="samples per checkpoint (N of FD@N)")
    parser.add_argument("--steps", type=int, default=20, help="sampler steps (default: 20)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="the UNet's dtype when sampling")
    parser.add_argument("--batch-size", type=int, default=250, help="images per sampling batch")
    parser.add_argument("--seed", type=int, default=0, help="sample seeds (seed + i), the floor's draw, KID subsets")
    parser.add_argument("--classifier-epochs", type=int, default=30, help="epochs of the agreement classifier")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    args.guidance, args.sampler = None, None  # the model's own, as generate() reads them
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    rows, test_f, floor = [], None, None
    for folder in checkpoints(args.run):
        pipe = DiffusionPipeline.from_pretrained(folder, device=args.device, dtype=dtype)
        check_model(pipe, folder)
        if test_f is None:  # the data, features, floor and classifier, once
            size, names = tuple(pipe.unet.config.sample_size), list(pipe.class_names)
            train, test = Split(args.data / "train", size, names), Split(args.data / "test", size, names)
            extractor = load_feature_extractor(EXTRACTOR, device=args.device)
            data_key = fingerprint(args.data, size)
            train_f = features(extractor, train.images, args.work / f"features-train-{data_key}.pt")
            test_f = features(extractor, test.images, args.work / f"features-test-{data_key}.pt")
            draw = torch.randperm(len(train_f), generator=torch.Generator().manual_seed(args.seed))[: args.num_images]
            floor = compare_features(
                train_f[draw], test_f, EXTRACTOR, generator=torch.Generator().manual_seed(args.seed)
            )
            classifier = train_classifier(args, size)
            counts = torch.bincount(test.labels, minlength=len(names)).tolist()
        key = fingerprint(folder, pipe.scheduler_name(), args.steps, None, args.num_images, args.seed, dtype, counts)
        row = generate(pipe, args, counts, key)
        sample_f = features(extractor, row["images"], args.work / f"features-samples-{key}.pt")
        result = compare_features(sample_f, test_f, EXTRACTOR, generator=torch.Generator().manual_seed(args.seed))
        per_class = agreement(classifier, row["images"], row["labels"])
        hits = sum(per_class[c] * (row["labels"] == c).sum().item() for c in per_class) / len(row["labels"])
        minutes = json.loads((folder / "trainer_state.json").read_text())["elapsed_s"] / 60
        rows.append((folder.name, minutes, result, hits, sum(per_class.values()) / len(per_class)))
        print(f"{folder.name}: {minutes:.1f} min, FD {result.fd:.2f}", flush=True)
    n = args.num_images
    print(f"\n| checkpoint | training minutes | FD@{n} | KID@{n} x 10^3 | agreement (all) | agreement (balanced) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, minutes, r, hits, balanced in rows:
        kid = f"{1e3 * r.kid:.2f} ± {1e3 * r.kid_std:.2f}"
        print(f"| {name} | {minutes:.1f} | {r.fd:.2f} | {kid} | {hits:.3f} | {balanced:.3f} |")
    print(f"| training split ({n}, seeded draw): floor | | {floor.fd:.2f} | {1e3 * floor.kid:.2f} | | |")


if __name__ == "__main__":
    main()
