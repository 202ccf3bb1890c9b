"""``diffusion-app`` / ``python -m diffusion.app``: the local web page (`diffusion.app`)."""

import argparse
import signal
from collections.abc import Sequence

from .common import DEVICES, ArgumentParser, device_from_flag, run_command

DEFAULT_PORT = 7860  # Gradio's


def app_parser() -> argparse.ArgumentParser:
    from ..app.actions import Limits  # light: the page's module (and gradio) load only when the app starts

    limits = Limits()
    parser = ArgumentParser(
        prog="diffusion-app",
        description="Serve a local web page that generates, edits and interpolates images with your models "
        "(Gradio). Needs the app extra: pip install 'pixel-diffusion[app]'.",
        epilog="Example: diffusion-app --model runs/my-model/model, then open http://127.0.0.1:7860",
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        help="a model folder, checkpoint or shipped model's name; repeat it to offer several (the first is "
        "opened; the shipped models are always offered)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: 127.0.0.1, this machine)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    parser.add_argument("--share", action="store_true", help="also serve through a public gradio.live link (off)")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="where to sample (default: auto)")
    parser.add_argument(
        "--max-images", type=int, default=limits.max_images, help=f"images per request (default: {limits.max_images})"
    )
    parser.add_argument(
        "--max-steps", type=int, default=limits.max_steps, help=f"steps per request (default: {limits.max_steps})"
    )
    parser.add_argument(
        "--max-size",
        type=int,
        default=limits.max_size,
        help=f"pixels on the longer side of an uploaded image (default: {limits.max_size})",
    )
    return parser


def app_main(argv: Sequence[str] | None = None) -> int:
    """``diffusion-app``: serve the web page until interrupted."""
    args = app_parser().parse_args(argv)
    return run_command("diffusion-app", lambda: _serve(args))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _serve(args: argparse.Namespace) -> int:
    for flag in ("max_images", "max_steps", "max_size"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be a positive integer, got {getattr(args, flag)}")
    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    try:
        from ..app import Limits, ModelShelf, build_app, launch
    except ModuleNotFoundError as e:
        if e.name != "gradio" and not (e.name or "").startswith("gradio."):
            raise
        raise ValueError("diffusion-app needs Gradio: pip install 'pixel-diffusion[app]'") from None
    shelf = ModelShelf(args.model, device_from_flag(args.device))
    for name in args.model:
        shelf.load(name)  # a folder that is not a model is refused now, not on the page
    app = build_app(shelf, Limits(args.max_images, args.max_steps, args.max_size))
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the server as Ctrl-C does, and the files go
    try:
        launch(app, args.host, args.port, args.share)
    except OSError as e:
        if "port" not in str(e).lower():
            raise
        raise ValueError(
            f"cannot serve on {args.host} port {args.port}: it is in use or not allowed; give another --port"
        ) from None
    return 0
