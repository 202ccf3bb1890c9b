"""The page in a real browser: headless Chromium (the system's, driven by Selenium) against `diffusion-app` as
a new user starts it, with the shipped Fashion-MNIST model. Set APP_SCREENSHOTS=FOLDER to keep the screenshots
(the README's picture is one of them)."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import browser as b
import numpy as np
import pytest
from PIL import Image

from diffusion import DiffusionPipeline

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def url():
    """``python -m diffusion.app`` with no flags (the shipped model) on a free local port."""
    pytest.importorskip("gradio")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "diffusion.app", "--port", str(port)]
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    address, deadline = f"http://127.0.0.1:{port}/", time.monotonic() + 60
    while server.poll() is None and time.monotonic() < deadline:
        try:
            urllib.request.urlopen(address, timeout=2)
            break
        except OSError:
            time.sleep(0.3)
    assert server.poll() is None, server.stdout.read()
    yield address
    server.send_signal(signal.SIGINT)
    server.communicate(timeout=30)


@pytest.fixture(scope="module")
def driver(url):
    driver = b.chromium_driver((1400, 1500))
    b.wait_for_app(driver, url)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory):
    return Path(os.environ.get("APP_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))


def test_one_click_on_generate_shows_the_shipped_models_images(driver):
    b.click_button(driver, "Generate")
    images = b.gallery_images(driver)
    assert [image.size for image in images] == [(28, 28)] * 8
    assert all(image.format == "PNG" and image.mode == "L" for image in images)
    assert (
        b.gallery_captions(driver)[0].startswith("seed 0 · ")
        and "dpmsolver++3m-sde, 20 steps, w 1.5" in (b.gallery_captions(driver)[0])
    )
    assert b.text(driver, "#generate-summary").startswith("8 images in ")


def test_a_class_and_a_seed_give_the_pipelines_own_images(driver, screenshots):
    b.choose(driver, "Class", "sneaker")
    b.set_number(driver, "Seed", 40)
    b.set_number(driver, "Images", 4)
    b.click_button(driver, "Generate")
    images = b.gallery_images(driver)
    own = DiffusionPipeline.from_pretrained()(4, seed=40, class_labels="sneaker", batch_size=8)
    assert [np.array_equal(np.array(a), np.array(b_)) for a, b_ in zip(images, own, strict=True)] == [True] * 4
    assert b.gallery_captions(driver) == [
        f"seed {s} · sneaker · dpmsolver++3m-sde, 20 steps, w 1.5" for s in range(40, 44)
    ]
    summary = b.text(driver, "#generate-summary")
    assert summary.startswith("4 images in ") and "20 NFE per image" in summary
    driver.save_screenshot(str(screenshots / "generate.png"))
    with Image.open(screenshots / "generate.png") as shot:
        assert shot.width == 1400 and shot.height > 1000  # the viewport


def test_a_bad_input_shows_the_message_and_the_page_keeps_working(driver):
    b.set_number(driver, "Images", 99)
    b.click_button(driver, "Generate")
    assert b.error_message(driver) == (
        "99 images were asked for; this app makes at most 16 per request (diffusion-app --max-images): ask for fewer"
    )
    b.set_number(driver, "Images", 2)
    b.click_button(driver, "Generate")
    assert len(b.gallery_images(driver)) == 2


def test_a_painted_stroke_inpaints_only_under_the_paint(driver, screenshots):
    b.choose(driver, "Class", "bag")
    b.set_number(driver, "Images", 2)
    b.click_button(driver, "Generate")
    source = b.gallery_images(driver)[1]
    b.select_image(driver, 1)
    b.click_button(driver, "Send the selected image to Edit")
    b.wait_idle(driver)
    b.paint_stroke(driver, [(6, 14), (22, 14)], source.size)  # a horizontal stroke across the middle
    b.click_button(driver, "Edit")
    edited = b.gallery_images(driver, "#edit-gallery")
    assert [image.size for image in edited] == [(28, 28)] * 2
    before, after = np.array(source), np.array(edited[0])
    assert np.array_equal(after[:8], before[:8]) and np.array_equal(after[21:], before[21:])  # far from the stroke
    assert not np.array_equal(after[12:17, 8:21], before[12:17, 8:21])  # under it
    assert b.text(driver, "#edit-summary").startswith("2 images in ")
    driver.save_screenshot(str(screenshots / "edit.png"))


def test_the_model_picker_switches_models_and_the_model_tab_follows(driver, screenshots):
    b.select_tab(driver, "Generate")  # the inpainting test left the page on Edit
    b.choose(driver, "Model", "noto-emoji")
    b.wait_idle(driver)
    b.choose(driver, "Class", "random")
    b.set_number(driver, "Images", 16)
    b.set_number(driver, "Seed", 0)
    b.click_button(driver, "Generate")
    images = b.gallery_images(driver)
    assert [(image.size, image.mode) for image in images] == [((32, 32), "RGB")] * 16
    classes = [caption.split(" · ")[1] for caption in b.gallery_captions(driver)]
    pipe = DiffusionPipeline.from_pretrained("noto-emoji")
    assert classes == [pipe.class_names[i] for i in pipe.random_class_labels(16, 0).tolist()]
    driver.save_screenshot(str(screenshots / "noto-emoji.png"))  # the README's picture
    b.select_tab(driver, "Model")
    assert "| parameters | 1,115,235 |" not in b.text(driver, "#model-summary")  # rendered as a table, not Markdown
    assert "1,115,235" in b.text(driver, "#model-summary")
    assert b.text(driver, "#model-card").startswith("Model card: Noto Emoji")
    b.select_tab(driver, "Generate")
