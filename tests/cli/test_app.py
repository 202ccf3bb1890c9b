"""diffusion-app / python -m diffusion.app: flags, one-line errors, and a real server on a local port."""

import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from diffusion import cli

ROOT = Path(__file__).resolve().parents[2]


def test_the_defaults_serve_this_machine_only_and_never_share():
    args = cli.app_parser().parse_args([])
    assert (args.host, args.port, args.share, args.model) == ("127.0.0.1", 7860, False, [])
    assert (args.max_images, args.max_steps, args.max_size) == (16, 250, 256)
    assert cli.app_parser().parse_args(["--model", "a", "--model", "b"]).model == ["a", "b"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-images", "0"], "diffusion-app: error: --max-images must be a positive integer, got 0"),
        (["--max-steps", "-1"], "diffusion-app: error: --max-steps must be a positive integer, got -1"),
        (["--port", "70000"], "diffusion-app: error: --port must be in 1..65535, got 70000"),
        (["--port", "0"], "diffusion-app: error: --port must be in 1..65535, got 0"),
    ],
)
def test_bad_flags_are_one_line_errors(argv, message, capsys):
    assert cli.app_main(argv) == 2
    assert capsys.readouterr().err == message + "\n"


def test_a_folder_that_is_not_a_model_is_refused_before_serving(tmp_path, capsys):
    assert cli.app_main(["--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("diffusion-app: error: ") and str(tmp_path) in err and err.count("\n") == 1


def test_without_gradio_it_names_the_extra_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio raises ModuleNotFoundError
    for name in [m for m in sys.modules if m.startswith("diffusion.app")]:
        monkeypatch.delitem(sys.modules, name)
    assert cli.app_main([]) == 2
    assert capsys.readouterr().err == (
        "diffusion-app: error: diffusion-app needs Gradio: pip install 'pixel-diffusion[app]'\n"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_module_entry_serves_the_page_on_localhost_and_stops_cleanly(tiny_conditional_model):
    """Stopped by `kill` (SIGTERM) as by Ctrl-C (the browser tests stop their server with SIGINT)."""
    pytest.importorskip("gradio")
    port = free_port()
    outboxes = set(Path(tempfile.gettempdir()).glob("diffusion-app-*"))
    command = [sys.executable, "-m", "diffusion.app", "--model", str(tiny_conditional_model), "--port", str(port)]
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, page = time.monotonic() + 60, None
        while page is None and time.monotonic() < deadline and server.poll() is None:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read().decode()
            except OSError:
                time.sleep(0.3)
        assert page is not None, server.stdout.read() if server.poll() is not None else "no answer in 60 s"
        assert '<meta property="og:title" content="pixel-diffusion" />' in page  # the Blocks title
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=30)
    # Stopped while Gradio serves: it closes the server and returns (0); while it is still starting: one line (130).
    assert (server.returncode, "Traceback" in output) in ((0, False), (130, False)), output
    assert server.returncode == 0 or output.rstrip().endswith("diffusion-app: interrupted")
    assert set(Path(tempfile.gettempdir()).glob("diffusion-app-*")) == outboxes  # its temporary files are gone
