"""Training on images with transparency: ``--background`` for 1 and 3 channels (a random one replayed exactly by a
resume and by workers), ``--channels 4`` into an RGBA model, and prepared RGBA datasets."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file
from tiny_run import TINY, config, final_weights  # tests/training is on sys.path

from diffusion.cli import train_main
from diffusion.data.prepare import prepare
from diffusion.io.checkpoint import list_checkpoints
from diffusion.pipeline import DiffusionPipeline
from diffusion.training import Trainer

TINY_FLAGS = ["--base-channels", "16", "--channel-mult", "1,2", "--norm-groups", "8", "--attention-levels", "1"]


@pytest.fixture
def data(tmp_path) -> Path:
    """8 RGBA 8x8 noise images in cats/ and dogs/, each fully transparent in a corner of its own size, half
    transparent in its last row, opaque elsewhere."""
    rng = np.random.default_rng(0)
    for i in range(8):
        array = rng.integers(0, 256, (8, 8, 4), dtype=np.uint8)
        array[:, :, 3] = 255
        array[: 2 + i % 4, : 2 + i % 4, 3], array[7, :, 3] = 0, 128
        folder = tmp_path / "data" / ("cats" if i % 2 else "dogs")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(folder / f"{i}.png")
    return tmp_path / "data"


def losses(out: Path) -> list[float]:
    return [json.loads(row)["loss"] for row in (out / "metrics.jsonl").read_text().splitlines()]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name].numpy(), b[name].numpy(), err_msg=name)


def test_train_py_with_four_channels_writes_an_rgba_model(tmp_path, data, capsys):
    out = tmp_path / "out"
    argv = ["--data", str(data), "--out", str(out), "--preset", "tiny", "--channels", "4", "--image-size", "8"]
    argv += ["--batch-size", "4", "--max-steps", "2", "--warmup-steps", "1", "--sample-every", "0", *TINY_FLAGS]
    assert train_main(argv) == 0
    assert capsys.readouterr().out == f"model written to {out / 'model'}\n"
    unet = json.loads((out / "model" / "unet" / "config.json").read_text())
    assert unet["in_channels"] == 4 and (unet["out_channels"] or unet["in_channels"]) == 4  # None: as in_channels
    pipe = DiffusionPipeline.from_pretrained(out / "model")
    assert pipe.unet.conv_out.out_channels == 4
    assert pipe(num_images=2, num_inference_steps=2, output_type="tensor", seed=0).shape == (2, 4, 8, 8)
    train = json.loads((out / "train_config.json").read_text())["train"]
    assert (train["channels"], train["background"]) == (4, "white")
    assert (
        "background" not in json.loads((out / "model" / "model_index.json").read_text()) and pipe.background == "white"
    )
    assert ": 8 images (0 skipped), fitted to 8x8 RGBA |" in (out / "model" / "README.md").read_text()


@pytest.mark.parametrize("background", ["black", "white"])
def test_a_background_with_four_channels_is_refused_in_one_line(tmp_path, data, capsys, background):
    argv = ["--data", str(data), "--out", str(tmp_path / "out"), "--channels", "4", "--background", background]
    assert train_main([*argv, "--max-steps", "2"]) == 2
    assert capsys.readouterr().err == (
        f"diffusion-train: error: --background {background} has no effect with --channels 4, which keeps "
        "transparency as the alpha channel: leave --background out, or train at --channels 1 or 3\n"
    )
    assert not (tmp_path / "out").exists()


def test_a_random_background_is_replayed_exactly_by_a_resume_with_workers(tmp_path, data):
    knobs = dict(background="random", random_crop=False, max_steps=4, checkpoint_every=2)
    Trainer(config(tmp_path, out="straight", **knobs), TINY).train()
    assert Trainer(config(tmp_path, out="resumed", **knobs), TINY).train(stop_at_step=2) is None
    Trainer(config(tmp_path, out="resumed", num_workers=1, **knobs), TINY).train()  # a worker reads the data
    assert_same_weights(final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed"))
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")
    Trainer(config(tmp_path, out="white", **knobs | {"background": "white"}), TINY).train()
    assert losses(tmp_path / "white") != losses(tmp_path / "straight")  # the background reaches the model


def test_a_resume_refuses_another_background_and_takes_white_for_checkpoints_without_one(tmp_path, data):
    Trainer(config(tmp_path, max_steps=2)).train()
    with pytest.raises(ValueError, match=r"other settings: --background 'white' -> 'black'\. To start a new run"):
        Trainer(config(tmp_path, max_steps=4, background="black")).train()
    _, path = list_checkpoints(tmp_path / "out")[-1]
    state = json.loads((path / "trainer_state.json").read_text())
    del state["config"]["background"]  # a checkpoint of a version without the setting composited on white
    del state["manifest"]  # and, so that the edit is not taken for damage, without manifests
    (path / "trainer_state.json").write_text(json.dumps(state))
    (path / "manifest.json").unlink()
    assert Trainer(config(tmp_path, max_steps=3)).train() == tmp_path / "out" / "model"
    assert [s for s, _ in list_checkpoints(tmp_path / "out")] == [2, 3]
    # Resumed from step 2: only the model of the shorter run is moved aside, not the whole run as a damaged one.
    assert [p.name.endswith("-replaced-by-step-3") for p in (tmp_path / "out" / "abandoned").iterdir()] == [True]


def test_a_prepared_rgba_dataset_trains_on_black_as_its_folder_does(tmp_path, data):
    prepare(data, tmp_path / "prepared", size=(8, 8), channels=4, workers=1)
    knobs = dict(background="black", max_steps=2, checkpoint_every=2)
    Trainer(config(tmp_path, out="folder", **knobs), TINY).train()
    Trainer(config(tmp_path, out="prepared", data=str(tmp_path / "prepared"), **knobs), TINY).train()
    assert_same_weights(
        *(load_file(tmp_path / out / "model" / "unet" / "model.safetensors") for out in ("folder", "prepared"))
    )
    assert losses(tmp_path / "prepared") == losses(tmp_path / "folder")
    card = (tmp_path / "prepared" / "model" / "README.md").read_text()
    assert "fitted to 8x8 RGB, transparency on black |" in card
    # The model, and a checkpoint read as one, record the background its inputs are composited on.
    model, (_, checkpoint) = tmp_path / "prepared" / "model", list_checkpoints(tmp_path / "prepared")[-1]
    assert json.loads((model / "model_index.json").read_text())["background"] == "black"
    assert DiffusionPipeline.from_pretrained(model).background == "black"
    assert DiffusionPipeline.from_pretrained(checkpoint).background == "black"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--background", "random"],
            "was prepared with its transparency composited on white, so --background random cannot apply: train it "
            "with --background white, or prepare {source} again with diffusion-prepare --channels 4 to choose the "
            "background at training time",
        ),
        (
            ["--channels", "4"],
            "was prepared with 3 channel(s), its transparency composited on white: prepare {source} again with "
            "diffusion-prepare --channels 4 to train with --channels 4",
        ),
    ],
)
def test_a_prepared_rgb_dataset_refuses_another_background_in_one_line_naming_the_fix(
    tmp_path, data, capsys, flags, message
):
    prepared = tmp_path / "prepared"
    prepare(data, prepared, size=(8, 8), channels=3, workers=1)
    argv = ["--data", str(prepared), "--out", str(tmp_path / "out"), "--preset", "tiny", "--image-size", "8"]
    assert train_main([*argv, "--max-steps", "2", *flags]) == 2
    expected = message.format(source=data.resolve())
    assert capsys.readouterr().err == f"diffusion-train: error: {prepared} {expected}\n"
    assert not (tmp_path / "out").exists()
