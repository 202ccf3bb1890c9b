"""What `read_model_folder` reads besides our model folders: shipped models by name, training checkpoints
and Hugging Face Hub ids (the cache laid out by hand in tmp_path; nothing ever goes to the network)."""

import errno
import importlib
import json
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffusion import DiffusionPipeline, cli
from diffusion.io import model_folder
from diffusion.io.assets import ASSETS
from diffusion.io.checkpoint import list_checkpoints
from diffusion.io.model_folder import CHECKPOINT_SAMPLER, SHIPPED_MODELS, read_model_folder
from diffusion.training import TrainConfig, Trainer
from diffusion.training.config import scheduler_config

sys.path.insert(0, str(Path(__file__).parents[1] / "training"))
from tiny_run import TINY, make_images  # the trainer tests' tiny run, kept once
from tiny_run import config as train_config


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any connection attempt fails the test at once."""

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# ----- training checkpoints -----


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Two class-conditional tiny runs on the same data: ``long`` (4 steps, checkpoints at 2 and 4) and
    ``short`` (the same settings, ending at step 2)."""
    root = tmp_path_factory.mktemp("runs")
    make_images(root / "data")
    Trainer(train_config(root, "long", class_cond=True, max_steps=4, checkpoint_every=2), TINY).train()
    Trainer(train_config(root, "short", class_cond=True, max_steps=2, checkpoint_every=2), TINY).train()
    return root


def images(pipe: DiffusionPipeline) -> torch.Tensor:
    return pipe(4, 3, seed=7, class_labels=["cats", "dogs", "cats", "dogs"], output_type="tensor")


@pytest.mark.parametrize("run, step, model", [("long", 4, "long"), ("long", 2, "short")])
def test_a_checkpoint_samples_as_the_model_a_run_ending_there_writes(runs, run, step, model):
    checkpoint = dict(list_checkpoints(runs / run))[step]
    ours = DiffusionPipeline.from_pretrained(checkpoint)
    final = DiffusionPipeline.from_pretrained(runs / model / "model")
    assert ours.class_names == final.class_names == ["cats", "dogs"]
    assert ours.scheduler_name() == final.scheduler_name() == "dpmsolver++3m-sde"
    assert ours.scheduler.config == final.scheduler.config and ours.unet.config == final.unet.config
    torch.testing.assert_close(images(ours), images(final), rtol=0, atol=0)  # the same weights: bit for bit


def test_sample_and_export_take_a_checkpoint(runs, tmp_path, capsys, caplog):
    checkpoint = runs / "long" / "checkpoints" / "step-4"
    out = tmp_path / "samples"
    argv = ["--model", str(checkpoint), "--num-images", "2", "--steps", "2", "--out", str(out)]
    assert cli.sample_main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["0.png", "1.png"]
    # --to pixel-diffusion: an ordinary model folder, byte for byte the one the run wrote at that step (which
    # also holds the run's own extras, such as a model card).
    folder = tmp_path / "model"
    assert cli.export_main(["--model", str(checkpoint), "--to", "pixel-diffusion", "--out", str(folder)]) == 0
    assert f"wrote {folder}/ (dpmsolver++3m-sde)" in capsys.readouterr().out
    final = runs / "long" / "model"
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert names == [
        "manifest.json", "model_index.json", "scheduler/scheduler_config.json", "unet/config.json",
        "unet/model.safetensors",
    ]  # fmt: skip
    for name in names:
        assert (folder / name).read_bytes() == (final / name).read_bytes(), name
    # --to diffusers: the default sampler is exported as its nearest, and the class names come back.
    hf = tmp_path / "hf"
    with caplog.at_level("WARNING"):
        assert cli.export_main(["--model", str(checkpoint), "--to", "diffusers", "--out", str(hf)]) == 0
    assert "exporting dpmsolver++2m-sde" in caplog.text
    assert f"wrote {hf}/ for diffusers (dpmsolver++2m-sde)" in capsys.readouterr().out
    assert DiffusionPipeline.from_pretrained(hf).class_names == ["cats", "dogs"]


def test_the_checkpoint_sampler_is_the_trainers(tiny_pipeline, tmp_path):
    """model_folder cannot import training (a higher layer), so it builds the trainer's default sampler
    itself: the two must agree for every schedule setting a run can change."""
    run = TrainConfig(
        data="d", out="o", num_train_timesteps=500, beta_schedule="cosine", zero_terminal_snr=True,
        prediction_type="v_prediction", background="black",
    )  # fmt: skip
    unet = tiny_pipeline.unet
    ema = {n: p.detach().clone() for n, p in unet.named_parameters()} | {"__num_updates__": torch.tensor(3)}
    save_file(ema, tmp_path / "ema.safetensors")
    state = {"step": 3, "config": run.to_dict(), "unet": unet.config.to_dict(), "class_names": []}
    (tmp_path / "trainer_state.json").write_text(json.dumps(state))  # no manifest: an older checkpoint
    _, scheduler, _, background = read_model_folder(tmp_path)
    assert scheduler.config == scheduler_config(run) and CHECKPOINT_SAMPLER == "dpmsolver++3m-sde"
    assert background == "black"  # the run's, as its model folder records it


def test_a_damaged_or_foreign_checkpoint_is_one_clear_error(runs, tmp_path):
    checkpoint = tmp_path / "step-4"
    shutil.copytree(runs / "long" / "checkpoints" / "step-4", checkpoint)
    ema = checkpoint / "ema.safetensors"
    ema.write_bytes(ema.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"checkpoint .*step-4 is damaged: .*ema.safetensors is truncated"):
        DiffusionPipeline.from_pretrained(checkpoint)
    # Without a manifest (as written before manifests existed) it is read as it is.
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    (checkpoint / "trainer_state.json").write_text(json.dumps(state | {"manifest": False}))
    (checkpoint / "manifest.json").unlink()
    with pytest.raises(ValueError, match=r"ema.safetensors is not a readable safetensors file"):
        DiffusionPipeline.from_pretrained(checkpoint)
    del state["unet"]
    (checkpoint / "trainer_state.json").write_text(json.dumps(state | {"manifest": False}))
    with pytest.raises(ValueError, match=r"trainer_state.json has no 'unet' setting; it does not describe a model"):
        DiffusionPipeline.from_pretrained(checkpoint)


def test_a_run_folder_points_to_its_model(runs):
    with pytest.raises(ValueError, match=r"long is not a model folder .*a training run's model is .*long/model"):
        DiffusionPipeline.from_pretrained(runs / "long")


def test_reading_a_checkpoint_does_not_import_accelerate(runs):
    code = (
        "import sys; from diffusion.io.model_folder import read_model_folder; "
        f"read_model_folder({str(runs / 'long' / 'checkpoints' / 'step-2')!r}); "
        "print('accelerate' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout == "False\n"


# ----- Hugging Face Hub ids -----

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(root: Path, repo_id: str, folder: Path) -> Path:
    """The Hugging Face cache layout of ``repo_id`` at one commit, holding ``folder``'s files."""
    owner, name = repo_id.split("/")
    repo = root / f"models--{owner}--{name}"
    snapshot = repo / "snapshots" / COMMIT
    for file in folder.rglob("*"):
        if file.is_file():
            (snapshot / file.relative_to(folder)).parent.mkdir(parents=True, exist_ok=True)
            (snapshot / file.relative_to(folder)).write_bytes(file.read_bytes())
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


def online_with_a_cache(monkeypatch, tmp_path: Path, folder: Path) -> None:
    """Online mode (whatever the environment says), run from ``tmp_path``, with ``folder`` cached as
    someone/tiny-ddpm in ``tmp_path/cache``."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    hub_cache(tmp_path / "cache", "someone/tiny-ddpm", folder)


@pytest.fixture
def exported(tiny_conditional_pipeline, tmp_path) -> tuple[DiffusionPipeline, Path]:
    """The tiny class-conditional pipeline, and its export for diffusers."""
    tiny_conditional_pipeline.save_pretrained(tmp_path / "ours")
    assert cli.export_main(["--model", str(tmp_path / "ours"), "--to", "diffusers", "--out", str(tmp_path / "hf")]) == 0
    return tiny_conditional_pipeline, tmp_path / "hf"


@pytest.mark.parametrize("variable", ["HF_HUB_CACHE", "HF_HOME"])
def test_a_hub_id_loads_from_the_cache_offline(exported, tmp_path, monkeypatch, variable):
    pipe, folder = exported
    cache = tmp_path / "home" / "hub" if variable == "HF_HOME" else tmp_path / "cache"
    hub_cache(cache, "someone/tiny-ddpm", folder)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv(variable, str(tmp_path / "home" if variable == "HF_HOME" else cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # no local folder someone/tiny-ddpm
    back = DiffusionPipeline.from_pretrained("someone/tiny-ddpm")
    assert back.class_names == ["cat", "dog"]
    torch.testing.assert_close(
        back(2, 3, seed=1, class_labels=["dog", "cat"], output_type="tensor"),
        pipe(2, 3, seed=1, class_labels=["dog", "cat"], output_type="tensor"),
        rtol=0,
        atol=0,
    )
    # sample.py's --model goes through from_pretrained: a hub id works there too.
    out = tmp_path / "out"
    assert (
        cli.sample_main(["--model", "someone/tiny-ddpm", "--num-images", "1", "--steps", "2", "--out", str(out)]) == 0
    )
    assert [p.name for p in out.iterdir()] == ["0.png"]


def test_a_hub_id_not_in_the_cache_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    message = (
        r"model folder google/ddpm-cifar10-32 not found, and the Hub model google/ddpm-cifar10-32 is not in the "
        r"Hugging Face cache \(.*cache\) while HF_HUB_OFFLINE is set: get it with "
        r"`hf download google/ddpm-cifar10-32 --local-dir DIR` where the hub is reachable and pass DIR"
    )
    with pytest.raises(FileNotFoundError, match=message):
        DiffusionPipeline.from_pretrained("google/ddpm-cifar10-32")
    assert cli.export_main(["--model", "google/ddpm-cifar10-32", "--to", "diffusers", "--out", "hf"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "hf download google/ddpm-cifar10-32 --local-dir DIR" in err[0]
    assert not (tmp_path / "hf").exists()
    # Not a hub id (three parts): the plain message, and nothing is asked of the hub.
    with pytest.raises(FileNotFoundError, match=r"^model folder runs/mine/model not found$"):
        DiffusionPipeline.from_pretrained("runs/mine/model")


@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_online_a_hub_id_is_downloaded_with_its_configs_and_weights_only(exported, tmp_path, monkeypatch, weights):
    """Online, from_pretrained asks huggingface_hub for the snapshot (faked here: no network in tests): by
    exact names, so that a variant (unet/*.fp16.safetensors) is not fetched too, and a distilled model's
    other students by their one pattern; diffusers' .bin weights only for a model without safetensors ones."""
    import huggingface_hub

    _, folder = exported
    if weights == "bin":
        state = load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")
        torch.save(state, folder / "unet" / "diffusion_pytorch_model.bin")
        (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    calls = []

    def snapshot_download(repo_id, cache_dir, etag_timeout, allow_patterns):
        calls.append((repo_id, etag_timeout, allow_patterns))
        return str(folder)

    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", lambda self, repo_id, timeout: calls.append(timeout))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_ETAG_TIMEOUT", 7)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.chdir(tmp_path)
    assert DiffusionPipeline.from_pretrained("someone/tiny-ddpm").class_names == ["cat", "dog"]
    files = [
        "model_index.json", "manifest.json", "unet/config.json", "scheduler/scheduler_config.json",
        "unet/diffusion_pytorch_model.safetensors", "unet/model.safetensors", "unet/model-*steps.safetensors",
    ]  # fmt: skip
    expected = [7, ("someone/tiny-ddpm", 7, files)]  # repo_info and each download bounded by the timeout
    if weights == "bin":
        expected.append(("someone/tiny-ddpm", 7, ["unet/diffusion_pytorch_model.bin"]))
    assert calls == expected


@pytest.mark.parametrize("first", ["runs", "models"])
def test_a_missing_folder_under_a_local_folder_is_not_a_hub_id(tmp_path, monkeypatch, first):
    """runs/x beside runs/ (models/ddpm-cifar10-32 beside models/) is a missing local folder: one line, and
    nothing is asked of the hub (the no_network fixture fails any attempt)."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / first).mkdir()
    name = f"{first}/ddpm-cifar10-32"
    with pytest.raises(FileNotFoundError, match=rf"^model folder {name} not found$"):
        DiffusionPipeline.from_pretrained(name)


def test_a_repo_id_huggingface_hub_refuses_is_a_missing_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(__import__("huggingface_hub").constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.chdir(tmp_path)
    for name in ("my--runs/x", "runs/x.", "a/b--c"):  # "--" and a trailing "." are not in repo ids
        with pytest.raises(FileNotFoundError, match=rf"^model folder {re.escape(name)} not found$"):
            DiffusionPipeline.from_pretrained(name)


@pytest.mark.parametrize(
    "failure",
    [
        json.JSONDecodeError("Expecting value", "<html>", 0),  # a proxy's page instead of the hub's JSON
        OSError(errno.ECONNRESET, "Connection reset by peer"),
        "http",  # a transport error of huggingface_hub's HTTP client (not an OSError there)
        "hub",  # an answer of the hub: an outage
    ],
)
def test_any_failure_online_falls_back_to_the_cache(exported, tmp_path, monkeypatch, failure):
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError

    from diffusion.io.model_folder import _http_errors

    if failure == "http":
        failure = _http_errors()[0]("stream broken")
    elif failure == "hub":
        http = importlib.import_module(HfHubHTTPError.__mro__[1].__module__)  # huggingface_hub's HTTP client
        response = http.Response(503, request=http.Request("GET", "https://huggingface.co/api/models/someone/x"))
        failure = HfHubHTTPError("503 Server Error: Service Unavailable", response=response)

    def fail(*args, **kwargs):
        raise failure

    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", fail)
    online_with_a_cache(monkeypatch, tmp_path, exported[1])
    assert DiffusionPipeline.from_pretrained("someone/tiny-ddpm").class_names == ["cat", "dog"]
    # Not cached: one line, the hub's own answer where it gave one.
    if isinstance(failure, HfHubHTTPError):
        match, kind = r"^could not download someone/other from the Hugging Face Hub \(503 Server Error", ValueError
    else:
        match, kind = (
            r"not in the Hugging Face cache .* while the Hugging Face Hub cannot be reached \(",
            FileNotFoundError,
        )
    with pytest.raises(kind, match=match) as raised:
        DiffusionPipeline.from_pretrained("someone/other")
    assert "\n" not in str(raised.value)


def test_a_hub_that_never_answers_is_waited_for_only_the_etag_timeout(exported, tmp_path, monkeypatch):
    """A server that accepts connections and never answers (HF_ENDPOINT pointed at a local listener): the
    cache, or the one-line message, after HF_HUB_ETAG_TIMEOUT (1 s here), not a wait without end."""
    import huggingface_hub

    listener = socket.create_server(("127.0.0.1", 0))  # accepts (the kernel's backlog) and never answers
    port = listener.getsockname()[1]
    monkeypatch.undo()  # the no_network fixture: this test connects, to 127.0.0.1 only
    connect = socket.socket.connect

    def local_only(self, address):
        assert address[:2] == ("127.0.0.1", port), f"a test tried to reach {address}"
        return connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", local_only)
    endpoint = f"http://127.0.0.1:{port}"  # what HF_ENDPOINT sets when huggingface_hub is imported
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_ETAG_TIMEOUT", 1)
    online_with_a_cache(monkeypatch, tmp_path, exported[1])
    with listener:
        start = time.monotonic()
        assert DiffusionPipeline.from_pretrained("someone/tiny-ddpm").class_names == ["cat", "dog"]
        with pytest.raises(FileNotFoundError, match=r"while the Hugging Face Hub cannot be reached \(ReadTimeout"):
            DiffusionPipeline.from_pretrained("someone/other")
        assert time.monotonic() - start < 30  # two waits of about 1 s (and huggingface_hub's setup)


def test_a_hub_id_loads_from_the_cache_when_the_hub_cannot_be_reached(exported, tmp_path, monkeypatch):
    """Online mode, but every connection fails at once (as on a machine without network): huggingface_hub
    falls back to the cache, and a model not in it is the one-line message."""

    def unreachable(*args, **kwargs):
        raise OSError(errno.ENETUNREACH, "Network is unreachable")

    for name in ("getaddrinfo", "create_connection"):
        monkeypatch.setattr(socket, name, unreachable)
    monkeypatch.setattr(socket.socket, "connect", unreachable)
    online_with_a_cache(monkeypatch, tmp_path, exported[1])
    assert DiffusionPipeline.from_pretrained("someone/tiny-ddpm").class_names == ["cat", "dog"]
    with pytest.raises(FileNotFoundError, match=r"not in the Hugging Face cache .* while the Hugging Face Hub cannot"):
        DiffusionPipeline.from_pretrained("someone/other")


# ----- shipped models, by name -----


def test_the_shipped_models_are_fashion_mnist_the_default_noto_emoji_and_the_fast_one():
    assert list(SHIPPED_MODELS) == ["fashion-mnist", "noto-emoji", "fashion-mnist-fast"]  # the first: the default
    assert {name: ASSETS / name for name in ("fashion-mnist", "noto-emoji", "fashion-mnist-fast")} == SHIPPED_MODELS
    assert model_folder.SHIPPED_MODEL == ASSETS / "fashion-mnist"


def test_a_shipped_name_reads_its_folder_in_the_library_and_the_cli(tiny_conditional_model, tmp_path, monkeypatch):
    monkeypatch.setitem(SHIPPED_MODELS, "noto-emoji", tiny_conditional_model)
    monkeypatch.chdir(tmp_path)  # no local folder noto-emoji
    unet, _, class_names, _ = read_model_folder("noto-emoji")
    assert class_names == ["cat", "dog"] and unet.config.num_classes == 2
    assert DiffusionPipeline.from_pretrained("noto-emoji").class_names == ["cat", "dog"]
    args = ["--model", "noto-emoji", "--class", "dog", "--num-images", "1", "--steps", "2", "--out", "out"]
    assert cli.sample_main(args) == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["0.png"]


@pytest.mark.parametrize("name", [None, "fashion-mnist", "noto-emoji"])
def test_a_shipped_model_missing_from_the_installation_is_one_line_naming_model_path(
    name, tmp_path, monkeypatch, capsys
):
    for shipped in SHIPPED_MODELS:
        monkeypatch.setitem(SHIPPED_MODELS, shipped, tmp_path / "site-packages" / "diffusion" / "_assets" / shipped)
    monkeypatch.chdir(tmp_path)
    where = tmp_path / "site-packages" / "diffusion" / "_assets" / (name or "fashion-mnist")
    message = (
        f"the shipped model {name or 'fashion-mnist'} is not in this installation of pixel-diffusion (not at {where}); "
        "update or reinstall it to get the model, otherwise pass the path of a trained model (--model PATH)"
    )
    with pytest.raises(FileNotFoundError) as error:
        read_model_folder(name)
    assert str(error.value) == message
    with pytest.raises(FileNotFoundError, match=re.escape(message)):
        DiffusionPipeline.from_pretrained(name)
    assert cli.sample_main([*(["--model", name] if name else []), "--num-images", "1", "--out", "out"]) == 2
    assert capsys.readouterr().err == f"diffusion-sample: error: {message}\n"
    assert not (tmp_path / "out").exists()
