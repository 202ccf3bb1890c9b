"""Train the feature-space `Classifier` used by bench/fashion_mnist_quality.py on a folder of class subfolders.

    python bench/train_classifier.py --data data/fashion-mnist \
        [--out assets/fashion-mnist-classifier] [--epochs 2] [--limit N] [--threads 1]

Every ``--holdout-every``-th image (in the folder's sorted order) is held out and never trained on; the
script prints the held-out accuracy per epoch and at the end, and the wall time. No augmentation (no
flips: a flipped shoe is not a Fashion-MNIST shoe). Shuffling uses a local generator seeded by --seed;
weight initialisation uses the global generator in a forked, seeded scope, so reruns are identical.
"""

import argparse
import math
import time
from pathlib import Path

import torch
from torch import nn

from diffusion.data import ImageFolder
from diffusion.metrics.classifier import Classifier, ClassifierConfig


def load_all(dataset: ImageFolder, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode ``indices`` once: images ``(n, c, h, w)`` in [-1, 1] and labels ``(n,)``."""
    items = [dataset[(i, 0)] for i in indices]  # no random crop or flip, so the seed is unused
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


@torch.inference_mode()
def accuracy(model: Classifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    correct = sum(
        (model(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum().item()
        for i in range(0, len(images), batch_size)
    )
    return correct / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/fashion-mnist"), help="folder of class subfolders")
    parser.add_argument("--out", type=Path, default=Path("assets/fashion-mnist-classifier"))
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1, choices=(1, 3))
    parser.add_argument("--width", type=int, default=ClassifierConfig.width)
    parser.add_argument("--feature-dim", type=int, default=ClassifierConfig.feature_dim)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate (warm-up, then cosine)")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--holdout-every", type=int, default=10, help="hold out images whose index %% N == 0")
    parser.add_argument("--limit", type=int, default=None, help="train on a seeded random subset of this many")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    dataset = ImageFolder(args.data, (args.image_size, args.image_size), args.channels, hflip=False)
    if dataset.report.labels is None:
        raise SystemExit(f"{args.data} must hold one subfolder per class with the images inside")
    generator = torch.Generator().manual_seed(args.seed)
    held = [i for i in range(len(dataset)) if i % args.holdout_every == 0]
    train = [i for i in range(len(dataset)) if i % args.holdout_every != 0]
    if args.limit is not None:
        train = [train[i] for i in torch.randperm(len(train), generator=generator)[: args.limit].sort().values]
    train_x, train_y = load_all(dataset, train)  # (n, c, h, w), (n,)
    held_x, held_y = load_all(dataset, held)
    print(
        f"{len(dataset)} images in {len(dataset.class_names)} classes: {len(train)} train, {len(held)} held out; "
        f"loaded in {time.perf_counter() - start:.1f} s"
    )

    config = ClassifierConfig(
        in_channels=args.channels,
        num_classes=len(dataset.class_names),
        width=args.width,
        feature_dim=args.feature_dim,
    )
    with torch.random.fork_rng():  # nn.Module init draws from the global generator; keep that local
        torch.manual_seed(args.seed)
        model = Classifier(config, dataset.class_names)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    total, warmup = args.epochs * steps_per_epoch, min(100, args.epochs * steps_per_epoch // 10)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train), generator=generator)
        loss_sum = 0.0
        for i in range(0, len(train), args.batch_size):
            batch = order[i : i + args.batch_size]
            loss = nn.functional.cross_entropy(model(train_x[batch]), train_y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.item() * len(batch)
        model.eval()
        print(
            f"epoch {epoch + 1}/{args.epochs}: train loss {loss_sum / len(train):.4f}, "
            f"held-out accuracy {accuracy(model, held_x, held_y):.4f}, {time.perf_counter() - start:.0f} s"
        )

    model.save_pretrained(args.out)
    size = sum(p.stat().st_size for p in args.out.iterdir() if p.is_file())
    print(f"held-out accuracy {accuracy(model, held_x, held_y):.4f} on {len(held)} images")
    print(f"wall time {time.perf_counter() - start:.1f} s; saved {args.out} ({size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
