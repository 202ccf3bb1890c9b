"""The page through its API: `gradio_client` against a live app on a free local port, with the tiny models."""

import itertools
import socket
import time

import numpy as np
import pytest
from PIL import Image

from diffusion import DiffusionPipeline
from diffusion.app import Limits, ModelShelf, Outbox, actions, build_app, launch

gradio_client = pytest.importorskip("gradio_client")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tiny_conditional_model, tiny_model, tmp_path_factory):
    """(client, app): the app of the tiny models, served on 127.0.0.1 until the module's tests end."""
    shelf = ModelShelf([str(tiny_conditional_model), str(tiny_model)])
    app = build_app(shelf, Limits(max_images=6, max_steps=20, max_size=16), Outbox(tmp_path_factory.mktemp("outbox")))
    port = free_port()
    launch(app, port=port, prevent_thread_lock=True, quiet=True)
    yield gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False), app
    app.close()


def generate(client, tiny, **changes):
    values = {
        "model": str(tiny),
        "sampler": "ddim",
        "steps": 4,
        "class_choice": "random",
        "guidance": 1.5,
        "rescale": 0.0,
        "seed": 3,
        "num_images": 4,
        "batch_size": 4,
        "dtype": "fp32",
    } | changes
    return client.predict(*values.values(), api_name="/generate")


def test_generation_returns_the_pipelines_images_pixel_for_pixel(served, tiny_conditional_model):
    gallery, summary, download, *_ = generate(served[0], tiny_conditional_model, num_images=5, batch_size=2)
    images = [Image.open(item["image"]) for item in gallery]
    assert [image.size for image in images] == [(8, 8)] * 5
    own = DiffusionPipeline.from_pretrained(tiny_conditional_model)(
        5, 4, "ddim", seed=3, class_labels="random", guidance_scale=1.5
    )
    assert all(np.array_equal(np.array(a), np.array(b)) for a, b in zip(images, own, strict=True))
    assert [item["caption"].split(" · ")[0] for item in gallery] == [f"seed {s}" for s in range(3, 8)]
    assert images[0].text["seed"] == "3" and images[0].text["sampler"] == "ddim"  # the PNG keeps its settings
    assert summary.startswith("5 images in ") and "4 NFE per image" in summary
    assert [p.rsplit("/", 1)[-1] for p in download] == ["3.png", "4.png", "5.png", "6.png", "7.png", "images.zip"]


def test_inpainting_keeps_the_unmasked_pixels(served, tiny_conditional_model, tmp_path):
    picture = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4)
    layer = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    layer.paste((255, 0, 255, 255), (0, 0, 8, 3))  # paint the top three rows
    picture.save(tmp_path / "picture.png")
    layer.save(tmp_path / "layer.png")
    editor = {
        "background": gradio_client.handle_file(str(tmp_path / "picture.png")),
        "layers": [gradio_client.handle_file(str(tmp_path / "layer.png"))],
        "composite": gradio_client.handle_file(str(tmp_path / "picture.png")),
    }
    values = [str(tiny_conditional_model), "ddim", 4, "none", 1.5, 0.0, 0, 2, 2, "fp32", editor, "inpaint", 0.8, 1, 10]
    gallery, summary, _ = served[0].predict(*values, api_name="/edit")
    for item in gallery:
        out = np.array(Image.open(item["image"]))
        assert np.array_equal(out[3:], np.array(picture)[3:]) and not np.array_equal(out[:3], np.array(picture)[:3])
    assert summary.startswith("2 images in ")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_images": 7}, "7 images were asked for; this app makes at most 6 per request"),
        ({"class_choice": "cow"}, "unknown class"),
        ({"steps": 0}, "num_inference_steps must be in [1, 1000] (num_train_timesteps), got 0"),
        ({"model": "elsewhere"}, "unknown model 'elsewhere'"),
    ],
)
def test_a_bad_input_shows_its_one_line_message_and_the_next_request_works(
    served, tiny_conditional_model, changes, message
):
    with pytest.raises(gradio_client.exceptions.AppError) as error:
        generate(served[0], tiny_conditional_model, **changes)
    assert message in str(error.value) and "Traceback" not in str(error.value)
    gallery, *_ = generate(served[0], tiny_conditional_model, num_images=1)
    assert len(gallery) == 1


def test_an_empty_mask_is_refused_with_the_librarys_message(served, tiny_conditional_model, tmp_path):
    Image.new("L", (8, 8), 100).save(tmp_path / "grey.png")
    image = gradio_client.handle_file(str(tmp_path / "grey.png"))
    editor = {"background": image, "layers": [], "composite": image}
    values = [str(tiny_conditional_model), "ddim", 4, "none", 1.5, 0.0, 0, 1, 1, "fp32", editor, "inpaint", 0.8, 1, 10]
    with pytest.raises(gradio_client.exceptions.AppError, match=r"^nothing is painted on the image: paint the area"):
        served[0].predict(*values, api_name="/edit")


def test_interpolation_between_two_seeds_gives_a_strip_and_a_gif(served, tiny_conditional_model):
    values = [str(tiny_conditional_model), "ddim", 4, "cat", 1.5, 0.0, 0, 4, 4, "fp32", 2, 9, 3, None, None]
    strip, gif, summary = served[0].predict(*values, api_name="/interpolate")
    with Image.open(strip) as png, Image.open(gif) as animation:
        assert png.size == (3 * 10 + 2, 12) and animation.n_frames == 3
    assert summary.startswith("3 frames in ")


def test_the_model_tab_follows_the_chosen_model(served, tiny_model):
    classes, sampler, steps, summary, config, card = served[0].predict(str(tiny_model), "bf16", api_name="/model_info")
    assert (classes["choices"], classes["value"], sampler["value"]) == ([["none", "none"]], "none", "ddim")
    assert steps["value"] == 20  # the model's default_steps (a distilled model's own)
    assert "| classes | none (unconditional) |" in summary and '"num_classes": null' in config
    assert card.endswith("has no model card (README.md).") and "| dtype, device | bfloat16, cpu |" in summary


def test_requests_of_every_tab_sample_one_at_a_time(served, tiny_conditional_model, monkeypatch, tmp_path):
    """A generation, an interpolation and an edit at once: the queue runs them one after the other."""
    spans = []

    def timed(action):
        def run(*args, **kwargs):
            start = time.perf_counter()
            result = action(*args, **kwargs)
            spans.append((start, time.perf_counter()))
            return result

        return run

    for name in ("generate", "interpolate", "edit"):
        monkeypatch.setattr(actions, name, timed(getattr(actions, name)))
    Image.new("L", (8, 8), 100).save(tmp_path / "grey.png")
    image = gradio_client.handle_file(str(tmp_path / "grey.png"))
    shared = [str(tiny_conditional_model), "ddim", 8, "cat", 1.5, 0.0, 0, 3, 1, "fp32"]
    jobs = [
        served[0].submit(*shared, api_name="/generate"),
        served[0].submit(*shared, 2, 9, 3, None, None, api_name="/interpolate"),
        served[0].submit(
            *shared, {"background": image, "layers": [], "composite": image}, "img2img", 0.8, 1, 10, api_name="/edit"
        ),
    ]
    (gallery, *_), (_, _, frames), (edited, *_) = [job.result() for job in jobs]
    assert (len(gallery), frames.split(" in ")[0], len(edited)) == (3, "3 frames", 3)
    spans.sort()
    assert len(spans) == 3 and all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(spans))


def test_gradio_passes_a_progress_tracker_to_every_sampling_handler(served):
    from gradio.helpers import special_args

    handlers = {
        fn.api_name: fn.fn for fn in served[1].fns.values() if fn.api_name in ("generate", "edit", "interpolate")
    }
    assert sorted(handlers) == ["edit", "generate", "interpolate"]
    assert {name: special_args(fn)[1] for name, fn in handlers.items()} == {
        "generate": 10,
        "edit": 15,
        "interpolate": 15,
    }
