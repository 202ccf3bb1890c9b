"""The web page: a Gradio Blocks app over `diffusion.app.actions`.

The shared settings (model, class, sampler, steps, guidance, seed, images, batch size, dtype) sit on the left;
the tabs on the right generate, edit (inpainting with a painted mask, or img2img), interpolate, and describe the
model. Every sampling event shares one queue slot, so one request samples at a time and the rest wait with
their place shown. A bad value shows the library's one-line message in the page (`gradio.Error`).
"""

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from ..arguments import DTYPES, is_out_of_memory
from ..editing import DEFAULT_JUMP_LENGTH, DEFAULT_STRENGTH
from ..pipeline import DEFAULT_GUIDANCE_SCALE
from ..schedulers import SCHEDULER_NAMES
from . import actions
from .actions import Limits, Result, Sampling
from .models import ModelShelf, class_choices, default_class, describe, model_card, model_config
from .outbox import Outbox

SAMPLING = {"concurrency_limit": 1, "concurrency_id": "sampling"}  # one sampling request at a time, of any tab
MAX_GUIDANCE = 10.0
MAX_UPLOAD = "20mb"  # per uploaded file; --max-size bounds the pixels
CSS = ".pixels img { image-rendering: pixelated; }"  # small images scaled up show their pixels, unblurred
PROGRESS = gr.Progress()  # the default that marks a handler's progress argument for Gradio
SETTINGS = [f.name for f in dataclasses.fields(Sampling)]  # the shared settings, in the handlers' order


def page_errors(action: Callable[..., Any]) -> Callable[..., Any]:
    """``action`` with the library's input errors shown in the page as their one-line message."""

    @functools.wraps(action)  # Gradio finds the gr.Progress argument in the signature, through __wrapped__
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return action(*args, **kwargs)
        except (ValueError, FileNotFoundError) as error:
            raise gr.Error(str(error), print_exception=False) from None
        except (MemoryError, RuntimeError) as error:
            if not is_out_of_memory(error):
                raise
            message = "out of memory: ask for fewer images, a smaller batch size or bf16"
            raise gr.Error(message, print_exception=False) from None

    return run


def _reporter(progress: gr.Progress) -> actions.Progress:
    return lambda done, total: progress((done, total), desc="sampling", unit="model evaluations")


def _gallery(result: Result) -> list[tuple[str, str]]:
    return [(str(path), caption) for path, caption in zip(result.paths, result.captions, strict=True)]


def build_app(shelf: ModelShelf, limits: Limits | None = None, outbox: Outbox | None = None) -> gr.Blocks:
    """The page for the models on ``shelf``; results are written to ``outbox`` (default: a temporary folder,
    which `launch` must allow Gradio to serve: ``allowed_paths=[app.outbox.root]``)."""
    limits, outbox = limits or Limits(), outbox or Outbox()
    pipe = shelf.load(shelf.default)
    with gr.Blocks(title="pixel-diffusion", delete_cache=(3600, 3600), analytics_enabled=False) as app:
        app.outbox = outbox
        gr.Markdown("# pixel-diffusion\nGenerate and edit images with your own diffusion models.")
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                model = gr.Dropdown(shelf.names, value=shelf.default, label="Model", allow_custom_value=True)
                class_choice = gr.Dropdown(
                    class_choices(pipe), value=default_class(pipe), label="Class", allow_custom_value=True
                )
                sampler = gr.Dropdown(
                    list(SCHEDULER_NAMES), value=pipe.scheduler_name(), label="Sampler", allow_custom_value=True
                )
                steps = gr.Number(pipe.default_steps, precision=0, label="Steps")  # the model's; empty: the same
                guidance = gr.Slider(0, MAX_GUIDANCE, DEFAULT_GUIDANCE_SCALE, step=0.1, label="Guidance scale")
                rescale = gr.Slider(0, 1, 0, step=0.05, label="Guidance rescale")
                seed = gr.Number(0, precision=0, label="Seed")
                num_images = gr.Number(min(8, limits.max_images), precision=0, label="Images")
                batch_size = gr.Number(min(8, limits.max_images), precision=0, label="Batch size")
                dtype = gr.Radio(list(DTYPES), value="fp32", label="dtype")
            with gr.Column(scale=3):
                settings = [model, sampler, steps, class_choice, guidance, rescale, seed, num_images, batch_size, dtype]
                with gr.Tabs() as tabs:
                    generate_tab(shelf, limits, outbox, settings, tabs)
                    interpolate_tab(shelf, limits, outbox, settings)
                    info = model_tab(shelf, pipe)
        model.change(
            page_errors(lambda name, dtype: _model_changed(shelf, name, dtype)),
            inputs=[model, dtype],
            outputs=[class_choice, sampler, steps, *info],
            api_name="model_info",
        )
    return app


def _sampling(values: dict[str, Any]) -> Sampling:
    """The shared settings among a handler's arguments (``locals()``)."""
    return Sampling.from_page(**{name: values[name] for name in SETTINGS})


def generate_tab(shelf: ModelShelf, limits: Limits, outbox: Outbox, settings: list[Any], tabs: gr.Tabs) -> None:
    """The Generate tab, and the Edit tab that its selected image can be sent to."""
    with gr.Tab("Generate", id="generate"):
        run = gr.Button("Generate", variant="primary", elem_id="generate-button")
        gallery = gr.Gallery(
            label="Images", columns=8, format="png", elem_id="generate-gallery", elem_classes="pixels", height="auto"
        )
        summary = gr.Markdown(elem_id="generate-summary")
        download = gr.File(label="Download (each PNG carries its settings; images.zip has them all)", height=180)
        send = gr.Button("Send the selected image to Edit", elem_id="send-to-edit")
        paths = gr.State([])
        selected = gr.State(None)  # the path of the image selected in the gallery

    @page_errors
    def generate(
        model, sampler, steps, class_choice, guidance_scale, guidance_rescale, seed, num_images, batch_size, dtype,
        progress=PROGRESS,
    ) -> tuple[Any, ...]:  # fmt: skip
        result = actions.generate(shelf, _sampling(locals()), limits, outbox, _reporter(progress))
        paths = [str(p) for p in result.paths]
        return _gallery(result), result.summary, [str(p) for p in result.download], paths, None

    event = run.click(
        generate, settings, [gallery, summary, download, paths, selected], api_name="generate", **SAMPLING
    )
    event.then(lambda: gr.Gallery(selected_index=None), None, gallery, api_name=False)  # the grid, not a preview

    def chosen(paths: list[str], event: gr.SelectData) -> str | None:
        return paths[event.index] if event.index < len(paths) else None

    gallery.select(chosen, paths, selected, api_name=False)
    editor = edit_tab(shelf, limits, outbox, settings)

    def send_to_edit(path: str | None) -> tuple[Any, Any]:
        if path is None:
            raise gr.Error("select an image in the gallery first", print_exception=False)
        return {"background": path, "layers": [], "composite": path}, gr.Tabs(selected="edit")

    send.click(send_to_edit, selected, [editor, tabs], api_name=False)


def edit_tab(shelf: ModelShelf, limits: Limits, outbox: Outbox, settings: list[Any]) -> gr.ImageEditor:
    """The Edit tab: upload an image (or send one), paint the area to regenerate, or set a strength."""
    with gr.Tab("Edit", id="edit"):
        with gr.Row():
            editor = gr.ImageEditor(
                label="Image: paint the area to regenerate",
                type="pil",
                image_mode="RGBA",
                sources=("upload", "clipboard"),
                brush=gr.Brush(colors=["#ff00ff"], color_mode="fixed", default_size=3),  # image pixels
                elem_id="edit-editor",
            )
            results = gr.Gallery(
                label="Results", columns=2, format="png", elem_id="edit-gallery", elem_classes="pixels", height="auto"
            )
        with gr.Row():
            mode = gr.Radio(["inpaint", "img2img"], value="inpaint", label="Edit")
            strength = gr.Slider(0, 1, DEFAULT_STRENGTH, step=0.05, label="Strength (img2img)")
            resample = gr.Number(1, precision=0, label="RePaint resample")
            jump_length = gr.Number(DEFAULT_JUMP_LENGTH, precision=0, label="RePaint jump length")
        gr.Markdown(
            "Edits use the settings on the left, the Class too: choose `none` to keep the image's own content "
            "unguided, as `sample.py --init-image` does."
        )
        run = gr.Button("Edit", variant="primary", elem_id="edit-button")
        summary = gr.Markdown(elem_id="edit-summary")
        download = gr.File(label="Download", height=180)

    @page_errors
    def edit(
        model, sampler, steps, class_choice, guidance_scale, guidance_rescale, seed, num_images, batch_size, dtype,
        value, how, strength, resample, jump_length, progress=PROGRESS,
    ) -> tuple[Any, ...]:  # fmt: skip
        image, mask = _editor_image(value, how == "inpaint")
        strength = strength if how == "img2img" else None
        s = _sampling(locals())
        result = actions.edit(
            shelf, s, limits, outbox, image, mask, strength, resample, jump_length, _reporter(progress)
        )
        return _gallery(result), result.summary, [str(p) for p in result.download]

    inputs = [*settings, editor, mode, strength, resample, jump_length]
    run.click(edit, inputs, [results, summary, download], api_name="edit", **SAMPLING)
    return editor


def _editor_image(value: dict[str, Any] | None, inpaint: bool) -> tuple[Any, Any]:
    """(image, mask) of the image editor's value: its background, and the painted layers for inpainting."""
    background = (value or {}).get("background")
    if background is None or not inpaint:
        return background, None
    mask = actions.painted_mask(background, value.get("layers") or [])
    if mask.getbbox() is None:
        raise ValueError("nothing is painted on the image: paint the area to regenerate, or choose img2img")
    return background, mask


def interpolate_tab(shelf: ModelShelf, limits: Limits, outbox: Outbox, settings: list[Any]) -> None:
    """The Interpolate tab: frames between two seeds, or two uploaded images, with DDIM."""
    with gr.Tab("Interpolate", id="interpolate"):
        gr.Markdown(
            "Frames along the path between two seeds, or two uploaded images (inverted with DDIM). Interpolation "
            "always samples with DDIM at eta 0, whatever the Sampler setting, so that each frame is deterministic."
        )
        with gr.Row():
            start_seed = gr.Number(0, precision=0, label="Start seed")
            end_seed = gr.Number(1, precision=0, label="End seed")
            frames = gr.Number(8, precision=0, label="Frames")
        with gr.Row():
            start_image = gr.Image(label="Start image (instead of the seed)", type="filepath", format="png")
            end_image = gr.Image(label="End image (instead of the seed)", type="filepath", format="png")
        run = gr.Button("Interpolate", variant="primary", elem_id="interpolate-button")
        strip = gr.Image(
            label="Frames", type="filepath", format="png", elem_id="interpolate-strip", elem_classes="pixels"
        )
        gif = gr.Image(label="GIF", type="filepath", elem_id="interpolate-gif", elem_classes="pixels")
        summary = gr.Markdown(elem_id="interpolate-summary")

    @page_errors
    def interpolate(
        model, sampler, steps, class_choice, guidance_scale, guidance_rescale, seed, num_images, batch_size, dtype,
        start, end, frames, first, last, progress=PROGRESS,
    ) -> tuple[Any, ...]:  # fmt: skip
        num_images = actions.whole_number(frames, "frames")  # the frames are the images of this request
        s = _sampling(locals())
        ends = (
            actions.upload(first, "the start image") if first else actions.whole_number(start, "start seed"),
            actions.upload(last, "the end image") if last else actions.whole_number(end, "end seed"),
        )
        result = actions.interpolate(shelf, s, limits, outbox, ends, _reporter(progress))
        return str(result.paths[0]), str(result.paths[1]), result.summary

    inputs = [*settings, start_seed, end_seed, frames, start_image, end_image]
    run.click(interpolate, inputs, [strip, gif, summary], api_name="interpolate", **SAMPLING)


def model_tab(shelf: ModelShelf, pipe: Any) -> list[Any]:
    """The Model tab: summary, configs and model card of the chosen model; returns its three components."""
    with gr.Tab("Model", id="model"):
        summary = gr.Markdown(describe(pipe, shelf.default, shelf.folder(shelf.default)), elem_id="model-summary")
        config = gr.Code(model_config(pipe), language="json", label="Config")
        card = gr.Markdown(model_card(shelf.folder(shelf.default)), elem_id="model-card")
    return [summary, config, card]


def _model_changed(shelf: ModelShelf, name: str, dtype: str) -> tuple[Any, ...]:
    pipe = shelf.load(name, dtype)
    folder = shelf.folder(name)
    return (
        gr.Dropdown(choices=class_choices(pipe), value=default_class(pipe)),
        gr.Dropdown(value=pipe.scheduler_name()),
        gr.Number(value=pipe.default_steps),  # a distilled model: its default step count
        describe(pipe, name, folder),
        model_config(pipe),
        model_card(folder),
    )


def launch(
    app: gr.Blocks, host: str = "127.0.0.1", port: int | None = None, share: bool = False, **options: Any
) -> Any:
    """Serve ``app`` (queued: one sampling request at a time); returns what `gradio.Blocks.launch` returns."""
    outbox_root: Path = app.outbox.root
    return app.queue(max_size=32).launch(
        server_name=host,
        server_port=port,
        share=share,
        allowed_paths=[str(outbox_root)],
        max_file_size=MAX_UPLOAD,
        css=CSS,
        **options,
    )
