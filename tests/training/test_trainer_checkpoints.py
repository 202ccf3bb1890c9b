"""`diffusion.training.trainer_checkpoints`: a trainer's checkpoint, written once per step with the record of its
run, and read back into a new trainer of the same run."""

import json

import torch
from safetensors.torch import load_file
from tiny_run import TINY, config, make_images  # tests/training is on sys.path

from diffusion.training import Trainer
from diffusion.training.trainer_checkpoints import load_checkpoint, save_checkpoint, trainer_state


def test_a_checkpoint_records_its_run_once_and_loads_into_a_new_trainer(tmp_path):
    make_images(tmp_path / "data")
    trainer = Trainer(config(tmp_path, max_steps=2, checkpoint_every=2), TINY)
    trainer.train()
    step_2 = tmp_path / "out" / "checkpoints" / "step-2"
    state = json.loads((step_2 / "trainer_state.json").read_text())
    assert state["elapsed_s"] > 0
    assert {k: v for k, v in state.items() if k != "elapsed_s"} == {
        "step": 2,
        "world_size": 1,
        "dataset_size": 8,
        "config": trainer.config.to_dict(),
        "unet": trainer.unet_config.to_dict(),
        "class_names": [],
        "skipped": {},
        "listing": "names",  # a folder read by name, each image decoded when used
        "manifest": True,
    }
    assert trainer_state(trainer, 2).keys() == state.keys()
    # Step 2 is on disk: writing it again is skipped, so a crash cannot spoil the complete checkpoint.
    written = {p.name: p.stat().st_mtime_ns for p in step_2.iterdir()}
    save_checkpoint(trainer, 2)
    assert {p.name: p.stat().st_mtime_ns for p in step_2.iterdir()} == written

    fresh = Trainer(config(tmp_path, max_steps=2, checkpoint_every=2), TINY)
    fresh._set_up()
    assert load_checkpoint(fresh, step_2) == state
    weights = load_file(step_2 / "model.safetensors")
    for name, value in fresh.accelerator.unwrap_model(fresh.model).state_dict().items():
        torch.testing.assert_close(value, weights[name], rtol=0, atol=0, msg=name)
    assert fresh.skipped.known == {}
    torch.testing.assert_close(fresh.generator.get_state(), trainer.generator.get_state(), rtol=0, atol=0)
