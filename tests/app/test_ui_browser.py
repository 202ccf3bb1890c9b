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
def url(tmp_path_factory):
    """``python -m diffusion.app`` with no flags (the shipped model) on a free local port."""
    pytest.importorskip("gradio")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "diffusion.app", "--port", str(port)]
    log = tmp_path_factory.mktemp("server") / "output.txt"
    with open(log, "w") as output:
        server = subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)
    address, deadline, answered = f"http://127.0.0.1:{port}/", time.monotonic() + 60, False
    while not answered and server.poll() is None and time.monotonic() < deadline:
        try:
            answered = urllib.request.urlopen(address, timeout=2).status == 200
        except OSError:
            time.sleep(0.3)
    try:
        assert answered, log.read_text()
        yield address
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:  # Gradio's shutdown can stall under load; tests/cli/test_app.py checks it
            server.kill()
            server.wait(timeout=30)


@pytest.fixture(scope="module")
def driver(url):
    driver = b.chromium_driver((1400, 1500))
    b.wait_for_app(driver, url)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory):
    folder = Path(os.environ.get("APP_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


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
    assert driver.save_screenshot(str(screenshots / "generate.png"))
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
    assert driver.save_screenshot(str(screenshots / "edit.png"))


def test_an_uploaded_image_is_inpainted_where_painted_and_img2img_redraws_it(driver, tmp_path):
    picture = Image.fromarray(np.tile(np.arange(0, 252, 9, dtype=np.uint8), (28, 1)))  # a horizontal ramp
    picture.save(tmp_path / "ramp.png")
    b.clear_editor(driver)  # Gradio's editor must be empty before an upload replaces a sent image
    b.upload_to_editor(driver, str(tmp_path / "ramp.png"))
    b.paint_stroke(driver, [(14, 4), (14, 24)], picture.size)  # a vertical stroke down the middle
    b.click_button(driver, "Edit")
    after = np.array(b.gallery_images(driver, "#edit-gallery")[0])
    assert np.array_equal(after[:, :9], np.array(picture)[:, :9]) and np.array_equal(
        after[:, 20:], np.array(picture)[:, 20:]
    )
    assert not np.array_equal(after[6:23, 12:17], np.array(picture)[6:23, 12:17])
    b.choose(driver, "Edit", "img2img")
    b.click_button(driver, "Edit")
    redrawn = np.array(b.gallery_images(driver, "#edit-gallery")[0])
    assert b.text(driver, "#edit-summary").startswith("2 images in ") and "16 NFE per image" in b.text(
        driver, "#edit-summary"
    )
    assert not np.array_equal(redrawn[:, :9], np.array(picture)[:, :9])  # img2img redraws the whole image
    b.choose(driver, "Edit", "inpaint")


def test_the_model_picker_switches_models_and_the_model_tab_follows(driver, screenshots):
    b.select_tab(driver, "Generate")  # the inpainting test left the page on Edit
    b.choose(driver, "Model", "noto-emoji")
    b.wait_idle(driver)
    b.choose(driver, "Class", "random")
    count = 16 if os.environ.get("APP_SCREENSHOTS") else 8  # the README's picture shows two rows
    b.set_number(driver, "Images", count)
    b.set_number(driver, "Seed", 0)
    b.click_button(driver, "Generate")
    images = b.gallery_images(driver)
    assert [(image.size, image.mode) for image in images] == [((32, 32), "RGB")] * count
    classes = [caption.split(" · ")[1] for caption in b.gallery_captions(driver)]
    pipe = DiffusionPipeline.from_pretrained("noto-emoji")
    assert classes == [pipe.class_names[i] for i in pipe.random_class_labels(count, 0).tolist()]
    assert driver.save_screenshot(str(screenshots / "noto-emoji.png"))  # the README's picture
    b.select_tab(driver, "Model")
    assert "| parameters | 1,115,235 |" not in b.text(driver, "#model-summary")  # rendered as a table, not Markdown
    assert "1,115,235" in b.text(driver, "#model-summary")
    assert b.text(driver, "#model-card").startswith("Model card: Noto Emoji")
    b.select_tab(driver, "Generate")
