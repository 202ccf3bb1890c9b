"""What a run says about itself: the start-up summary, and the model card with a command that reruns it."""

import dataclasses
import json
import logging
import re
import shlex

import pytest
import torch
from tiny_run import TINY, config, make_images  # tests/training is on sys.path

from diffusion.cli import train_parser
from diffusion.io.files import verify_manifest, write_manifest
from diffusion.models import UNet, UNetConfig
from diffusion.training import TrainConfig, Trainer
from diffusion.training import trainer as trainer_module
from diffusion.training.report import (
    class_list,
    duration,
    length_source,
    model_card,
    portable,
    train_command,
)


@pytest.fixture
def data(tmp_path):
    folder = make_images(tmp_path / "data")
    (folder / "cats" / "broken.png").write_text("not an image")  # counted as skipped
    return folder


def parameters(unet_config: UNetConfig) -> int:
    return sum(p.numel() for p in UNet(unet_config).parameters())


def test_the_start_up_summary_gives_each_setting_its_value(tmp_path, data, caplog):
    c = config(tmp_path, class_cond=True, seed=3, max_steps=2, mixed_precision="bf16")
    with caplog.at_level(logging.INFO, logger="diffusion"):
        trainer = Trainer(c, TINY)
        trainer.train()
    messages = [r.getMessage() for r in caplog.records]
    expected = [
        f"images: 9 found under {data} (0 skipped)",  # listed by name: none known to be unreadable yet
        "classes: 2 (cats, dogs)",
        f"UNet: {parameters(trainer.unet_config):,} parameters (preset tiny)",
        "device: cpu x 1 process(es); precision: bf16 autocast (weights fp32); seed: 3",
        f"output folder: {tmp_path / 'out'}",
        "steps: 2 in total (--max-steps 2); a new run from step 0",
    ]
    listing = messages.index(f"listing {data} ...")  # before the listing: it can take a while
    assert listing < messages.index(expected[0])
    assert [m for m in messages if m in expected] == expected
    assert sum(m.startswith("skipped cats/broken.png, which does not decode (") for m in messages) == 1
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="diffusion"):
        Trainer(dataclasses.replace(c, max_steps=4), TINY).train()
    assert f"images: 8 found under {data} (1 skipped)" in caplog.messages  # the checkpoint knows the bad file
    assert (
        f"steps: 4 in total (--max-steps 4); resuming from {tmp_path / 'out' / 'checkpoints' / 'step-2'} at step 2 "
        "(2 to go)" in caplog.messages
    )


def test_a_warmup_longer_than_the_run_is_a_warning(tmp_path, data, caplog):
    with caplog.at_level(logging.WARNING):
        Trainer(config(tmp_path, max_steps=1, warmup_steps=3), TINY).train()
    assert (
        "the learning rate warms up over 3 steps (--warmup-steps), longer than this run (1 steps): it never reaches "
        "--lr 0.0002; lower --warmup-steps" in caplog.messages
    )


def test_a_cosine_schedule_inside_the_warmup_is_a_warning(tmp_path, data, caplog):
    with caplog.at_level(logging.WARNING):
        Trainer(config(tmp_path, max_steps=1, warmup_steps=1, lr_schedule="cosine"), TINY).train()
    assert (
        "--lr-schedule cosine decays the learning rate after the warmup (1 steps), which lasts this whole run (1 "
        "steps): it decays only if the run is extended past the warmup; lower --warmup-steps" in caplog.messages
    )


def test_summary_helpers():
    assert class_list([f"c{i}" for i in range(12)], 10) == "12 (c0, c1, c2, c3, c4, c5, c6, c7, c8, c9 ... and 2 more)"
    assert class_list(["a", "b"], 10) == "2 (a, b)"
    both = TrainConfig(data="d", out="o", max_steps=5, epochs=3.0)
    assert length_source(both, 5, 2.0) == "--max-steps is reached first: --max-steps 5, --epochs 3 = 6 steps"
    assert length_source(dataclasses.replace(both, max_steps=None), 6, 2.0) == "--epochs 3 at 2 steps per epoch"
    assert [duration(s) for s in (12.34, 2388, 7509)] == ["12.3 s", "39 min 48 s", "2 h 05 min 09 s"]


def test_the_model_card_describes_the_run_and_its_command_reruns_it(tmp_path, data, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the checkout: the card names data/, out/ and m.json relative to it
    (tmp_path / "m.json").write_text(json.dumps({"num_res_blocks": 1}))
    c = config(
        tmp_path, class_cond=True, max_steps=4, lr_schedule="cosine", hflip=False, model_config=str(tmp_path / "m.json")
    )
    Trainer(c, TINY).train(stop_at_step=2)
    step_2 = tmp_path / "out" / "checkpoints" / "step-2"
    state = json.loads((step_2 / "trainer_state.json").read_text())
    assert 0 < state["elapsed_s"] < 600
    state["elapsed_s"] = 3600.0  # as if the first session had trained for an hour: the card sums them
    (step_2 / "trainer_state.json").write_text(json.dumps(state))
    write_manifest(step_2)
    model = Trainer(c, TINY).train()

    card = (model / "README.md").read_text()
    assert card.startswith("# Model card: data 8x8, class-conditional\n")
    unet = json.loads((model / "unet" / "config.json").read_text())
    n = parameters(UNetConfig.from_dict({k: v for k, v in unet.items() if not k.startswith("_")}))
    for row in [
        f"| architecture | UNet preset `tiny` with --model-config m.json and UNet flags: {n:,} parameters, channels "
        "16, mult (1, 2), 1 res block(s) per level, attention at levels (1,) and in the middle, 3 input channel(s), "
        "2 classes + the null class |",
        "| conditioning | the class (`class_labels`: `cats`, `dogs`); trained with 10% of labels dropped to the null "
        "class, for classifier-free guidance (default w = 1.5) |",
        "| weights | EMA of the training weights (decay 0.9), float32, `unet/model.safetensors` |",
        "| diffusion | T = 1000, linear betas, epsilon prediction; default sampler `dpmsolver++3m-sde`, 20 steps |",
        "| data | `data`: 8 images (1 skipped), fitted to 8x8 RGB |",
        "- **Steps:** 4 steps of batch 4: 16 images, 2 epochs.",
    ]:
        assert row in card.splitlines(), row
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert f"- **Loss:** the last logged loss was {rows[-1]['loss']:.4g} (step 4); the mean of the last 4" in card
    wall = re.search(r"\*\*Wall time:\*\* 1 h 00 min (\d\d) s of training", card)
    assert wall and int(wall.group(1)) < 60, card  # the hour of the first session plus this one's seconds

    # The command parses back, with train.py's own parser, to this run's settings and UNet flags.
    command = re.search(r"```bash\n(.*)\n```", card, flags=re.DOTALL).group(1)
    assert max(len(line) for line in command.splitlines()) < 120  # wrapped, with backslashes as a shell reads them
    command = shlex.split(command.replace("\\\n", ""))
    assert command[:2] == ["python", "train.py"]
    args = vars(train_parser().parse_args(command[2:]))
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert TrainConfig(**{k: v for k, v in args.items() if k in train_fields}) == dataclasses.replace(
        c, data="data", out="out", model_config="m.json"
    )
    assert {k: v for k, v in args.items() if k not in train_fields and v is not None} == TINY

    assert str(tmp_path) not in card  # no folder of this machine
    # The card is for people: outside the weights' manifest, which still verifies.
    assert sorted(json.loads((model / "manifest.json").read_text())["files"]) == ["unet/model.safetensors"]
    assert verify_manifest(model)


def test_an_old_checkpoint_without_elapsed_time_resumes_from_zero(tmp_path, data):
    Trainer(config(tmp_path), TINY).train(stop_at_step=2)
    step_2 = tmp_path / "out" / "checkpoints" / "step-2"
    state = json.loads((step_2 / "trainer_state.json").read_text())
    del state["elapsed_s"]  # written before the field existed
    (step_2 / "trainer_state.json").write_text(json.dumps(state))
    write_manifest(step_2)
    Trainer(config(tmp_path), TINY).train()
    card = (tmp_path / "out" / "model" / "README.md").read_text()
    seconds = float(re.search(r"\*\*Wall time:\*\* ([\d.]+) s of training", card).group(1))
    final = json.loads((tmp_path / "out" / "checkpoints" / "step-4" / "trainer_state.json").read_text())
    assert 0 < final["elapsed_s"] <= seconds + 0.05 < 60  # the card, written after step-4, rounds to 0.1 s


def test_portable_paths_are_relative_to_the_folder_the_run_started_in(tmp_path):
    start = str(tmp_path)
    assert portable("data/cats", start) == "data/cats"  # as typed
    assert portable(str(tmp_path / "data" / "cats"), start) == "data/cats"
    assert portable(str(tmp_path.parent / "runs" / "a"), start) == "../runs/a"
    assert portable(str(tmp_path / "data"), None) == str(tmp_path / "data")  # no start folder: as it is


@pytest.mark.parametrize(
    "start, path",
    [
        ("", "{tmp}/data"),
        ("data", "{tmp}/data"),
        ("data", "."),
        ("data/cats", ".."),
        ("", "data"),
        ("data", "../data/"),
    ],
)
def test_the_card_is_titled_by_the_data_folders_own_name(tmp_path, start, path):
    """``--data "$PWD"`` or ``--data ..`` name the folder itself, not ``.`` or ``..``."""
    (tmp_path / "data" / "cats").mkdir(parents=True)
    card = model_card(
        config=TrainConfig(data=path.format(tmp=tmp_path), out="out", max_steps=1),
        unet=UNetConfig(sample_size=(8, 8)),
        unet_overrides=None,
        class_names=[],
        parameters=1,
        images=1,
        skipped=0,
        steps=1,
        elapsed_s=1.0,
        metrics=[],
        processes=1,
        device="cpu",
        sampler="ddim",
        sampler_steps=20,
        guidance_scale=1.0,
        start_folder=str(tmp_path / start),
    )
    assert card.splitlines()[0] == "# Model card: data 8x8, unconditional"


def test_a_run_whose_working_folder_is_deleted_still_writes_its_model_and_card(tmp_path, data, monkeypatch):
    """The card's paths are relative to the folder the run started in, read once: a run that outlives it
    (removed while training) still ends with its final model."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (tmp_path / "m.json").write_text(json.dumps({"num_res_blocks": 1}))
    real = trainer_module.training_loss

    def remove_work_folder(*args, **kwargs):
        if work.is_dir():
            work.rmdir()  # in the first step: os.getcwd() fails from here on
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "training_loss", remove_work_folder)
    model = Trainer(config(tmp_path, max_steps=2, model_config=str(tmp_path / "m.json")), TINY).train()
    assert not work.exists()
    assert model == tmp_path / "out" / "model" and (model / "unet" / "model.safetensors").is_file()
    card = (model / "README.md").read_text()
    assert card.startswith("# Model card: data 8x8, unconditional\n")
    assert "| data | `../data`: 8 images (1 skipped), fitted to 8x8 RGB |" in card.splitlines()
    assert "--data ../data --out ../out" in card and "--model-config ../m.json" in card


def test_train_command_quotes_and_spells_every_kind_of_value():
    c = TrainConfig(data="my data", out="o", image_size=(8, 16), hflip=False, lr=3e-4, resume="never", epochs=2.5)
    command = train_command(c, {"channel_mult": (1, 2), "attention_levels": (), "dropout": 0.1}, processes=2)
    assert command == (
        "accelerate launch --multi_gpu --num_processes 2 train.py --data 'my data' --out o --image-size 8x16 "
        "--no-hflip --lr 0.0003 --epochs 2.5 --channel-mult 1,2 --attention-levels '' --dropout 0.1"
    )
    args = vars(train_parser().parse_args(shlex.split(command)[6:]))
    assert args["image_size"] == (8, 16) and args["attention_levels"] == () and args["lr"] == 3e-4
    assert torch.tensor(args["dropout"]).item() == pytest.approx(0.1)
