"""Drive a Gradio page in headless Chromium with Selenium: helpers for the web app's browser tests.

How elements are found: a component is named by its visible label (``"Seed"``) or by ``"#elem-id"``. A label
is the text of the component's ``[data-testid=block-info]`` (inputs: Dropdown, Number, Slider, Radio,
Textbox) or ``[data-testid=block-label]`` (media: Gallery, Image, ImageEditor); the component is the nearest
ancestor holding a ``[data-testid=status-tracker]`` child, which every Gradio block has. Only displayed
components count, so the same label may recur on another tab. Buttons are found by their text, skipping tab
buttons and Gradio's hidden copies (``aria-hidden``); tabs are ``button[role=tab]`` with their name.

Waiting: `click_button` watches the page's status trackers from just before the click; `wait_idle` returns
once none has been in progress for a moment (an error counts as done). Gallery and Image files
are fetched from their ``/gradio_api/file=`` URLs by this process, so a Gallery or an Image must use
``format="png"`` (the default, WebP, is lossy). The browser and its driver come from the system (Debian: ``chromium``,
``chromium-driver``); nothing is downloaded, Selenium Manager included.
"""

import base64
import io
import itertools
import os
import shutil
import urllib.request
from collections.abc import Sequence

import pytest
from PIL import Image

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install -e '.[test]'")
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException  # noqa: E402  (after the skip)
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

WebDriver = webdriver.Remote
# Seconds after a click by which its work counts as done if nothing has shown progress: an event whose outputs
# are all on a tab not yet opened (so not yet rendered) has no status tracker to show it.
GRACE = 1.5
# A status tracker in progress: shown (no `hide`) and not showing an error.
PENDING = "[data-testid=status-tracker]:not(.hide):not(:has(.error))"
WATCH = """
window.__watch && window.__watch.observer.disconnect();
const watch = (window.__watch = {busy_at: performance.now() + arguments[1]});
watch.observer = new MutationObserver(() => {
  if (document.querySelector(arguments[0]) !== null) watch.busy_at = performance.now();
});
watch.observer.observe(document.body, {subtree: true, childList: true, attributes: true, attributeFilter: ['class']});
"""


def chromium_driver(window: tuple[int, int] = (1280, 1600)) -> WebDriver:
    """Headless Chromium at ``window`` (CSS pixels, scale 1), or a skip naming the packages to install."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("the browser tests need Chromium and its driver on PATH: apt-get install chromium chromium-driver")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never look for (or download) a browser
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run"):
        options.add_argument(flag)
    options.add_argument(f"--window-size={window[0]},{window[1]}")
    options.add_argument("--force-device-scale-factor=1")  # element offsets are image offsets
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver), options=options)


def wait_for_app(driver: WebDriver, url: str, timeout: float = 60) -> None:
    """Open ``url`` and wait until Gradio has rendered its components."""
    driver.get(url)
    WebDriverWait(driver, timeout).until(lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid=status-tracker]"))


def find(driver: WebDriver, name: str, timeout: float = 10) -> WebElement:
    """The displayed component labelled ``name``, or with elem_id ``name[1:]`` when ``name`` starts with '#'."""
    if name.startswith("#"):
        return _shown(driver, f"//*[@id={_literal(name[1:])}]", f"component {name!r}", timeout)
    label = f"//*[@data-testid='block-info' or @data-testid='block-label'][normalize-space()={_literal(name)}]"
    return _shown(driver, f"{label}/ancestor::*[*[@data-testid='status-tracker']][1]", f"component {name!r}", timeout)


def choose(driver: WebDriver, label: str, value: str) -> None:
    """Pick the option shown as ``value`` in a Dropdown (a combobox and a listbox) or a Radio."""
    block = find(driver, label)
    if block.find_elements(By.CSS_SELECTOR, "input[type=radio]"):
        option = block.find_element(By.XPATH, f".//label[normalize-space()={_literal(value)}]")
        option.click()
        WebDriverWait(driver, 5).until(lambda d: option.find_element(By.TAG_NAME, "input").is_selected())
        return
    box = block.find_element(By.CSS_SELECTOR, "input[role=combobox]")
    box.click()
    listbox = f"//*[@id={_literal(box.get_attribute('aria-controls'))}]"
    _shown(driver, f"{listbox}//*[@role='option'][@aria-label={_literal(value)}]", f"option {value!r}", 5).click()
    WebDriverWait(driver, 5).until(lambda d: box.get_attribute("value") == value)


def set_number(driver: WebDriver, label: str, value: float) -> None:
    """Type ``value`` into a Number or a Slider's number box, then leave it so that Gradio takes it."""
    box = find(driver, label).find_element(By.CSS_SELECTOR, "input[type=number]")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value), Keys.TAB)
    WebDriverWait(driver, 5).until(lambda d: float(box.get_attribute("value")) == float(value))


def select_tab(driver: WebDriver, name: str) -> None:
    tab = driver.find_element(By.XPATH, f"//button[@role='tab'][normalize-space()={_literal(name)}]")
    tab.click()
    WebDriverWait(driver, 5).until(lambda d: tab.get_attribute("aria-selected") == "true")


def click_button(driver: WebDriver, text: str) -> None:
    """Click the displayed button reading ``text`` (not a tab), and start watching for the work it starts."""
    path = f"//button[normalize-space()={_literal(text)}][not(@role='tab')][not(ancestor-or-self::*[@aria-hidden])]"
    button = _shown(driver, path, f"button {text!r}")
    driver.execute_script(WATCH, PENDING, GRACE * 1000)
    button.click()


def wait_idle(driver: WebDriver, timeout: float = 60, settle: float = 0.5) -> None:
    """Wait until the work started by the last `click_button` has finished (or failed), and nothing has been
    in progress for ``settle`` seconds: the gap between an event and its ``.then`` is not the end. Work that
    shows no progress at all counts as done ``GRACE + settle`` seconds after the click."""
    idle = "return document.querySelector(arguments[0]) ? 0 : performance.now() - window.__watch.busy_at"
    busy = f"return [...document.querySelectorAll('{PENDING}')].map(e => e.parentElement.id + ': ' + e.textContent)"
    try:
        WebDriverWait(driver, timeout, poll_frequency=0.1).until(
            lambda d: d.execute_script(idle, PENDING) > settle * 1000
        )
    except TimeoutException:
        raise TimeoutException(f"still busy after {timeout} s: {driver.execute_script(busy)}") from None


def gallery_images(driver: WebDriver, name: str = "#generate-gallery", timeout: float = 60) -> list[Image.Image]:
    """The images of a Gallery, in order, once the page is idle; their captions are `gallery_captions`."""
    wait_idle(driver, timeout)
    return [fetch_image(img.get_attribute("src")) for img in _thumbnails(driver, name)]


def gallery_captions(driver: WebDriver, name: str = "#generate-gallery") -> list[str]:
    return [img.get_attribute("alt") for img in _thumbnails(driver, name)]


def select_image(driver: WebDriver, index: int, name: str = "#generate-gallery") -> None:
    """Click a Gallery's image ``index`` (from 0), which selects it and opens its preview."""
    _thumbnails(driver, name)[index].find_element(By.XPATH, "..").click()
    selected = ".grid-container button.thumbnail-item.selected"
    WebDriverWait(driver, 5).until(lambda d: find(d, name).find_elements(By.CSS_SELECTOR, selected))


def image(driver: WebDriver, name: str, timeout: float = 60) -> Image.Image:
    """The picture an Image component shows, once the page is idle."""
    wait_idle(driver, timeout)
    return fetch_image(find(driver, name).find_element(By.CSS_SELECTOR, "img").get_attribute("src"))


def text(driver: WebDriver, name: str) -> str:
    """What a Textbox holds, or the text a Markdown shows."""
    block = find(driver, name)
    boxes = block.find_elements(By.CSS_SELECTOR, "textarea, input[type=text]")
    return boxes[0].get_attribute("value") if boxes else block.text


def fetch_image(src: str) -> Image.Image:
    """The image at ``src`` (an http or a data: URL), decoded and loaded."""
    if src.startswith("data:"):
        data = base64.b64decode(src.split(",", 1)[1])
    else:
        with urllib.request.urlopen(src, timeout=30) as response:
            data = response.read()
    picture = Image.open(io.BytesIO(data))
    picture.load()
    return picture


def error_message(driver: WebDriver, timeout: float = 30) -> str:
    """The text of the newest error toast (a ``gradio.Error``); then closes every toast and waits until they
    are gone, so that the next check starts clean. The text is read as ``textContent``: a toast fades in."""
    texts = "[data-testid=toast-body].error [data-testid=toast-text]"
    WebDriverWait(driver, timeout).until(lambda d: d.find_elements(By.CSS_SELECTOR, texts), "no error was shown")
    message = driver.find_elements(By.CSS_SELECTOR, texts)[-1].get_attribute("textContent").strip()
    driver.execute_script("document.querySelectorAll('[data-testid=toast-close]').forEach(b => b.click())")
    WebDriverWait(driver, 10).until(lambda d: not d.find_elements(By.CSS_SELECTOR, "[data-testid=toast-body]"))
    return message


def editor(driver: WebDriver, name: str | None = None) -> WebElement:
    """An ImageEditor: the one named ``name``, else the first displayed one."""
    if name is not None:
        return find(driver, name)
    return _shown(driver, "//*[*[@data-testid='status-tracker']][.//*[contains(@class, 'pixi-target')]]", "editor")


def upload_to_editor(driver: WebDriver, path: str, name: str | None = None, timeout: float = 30) -> None:
    """Upload the file ``path`` as an ImageEditor's background and wait until the editor shows it."""
    block = editor(driver, name)
    block.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(os.path.abspath(path))
    WebDriverWait(driver, timeout).until(lambda d: not block.find_elements(By.CSS_SELECTOR, ".empty"))


def clear_editor(driver: WebDriver, name: str | None = None) -> None:
    """Empty an ImageEditor with its 'Clear canvas' button. An editor holding an upload must be cleared before
    the server sets its value, or it shows its spinner for ever."""
    block = editor(driver, name)
    block.find_element(By.CSS_SELECTOR, "button[aria-label='Clear canvas']").click()
    WebDriverWait(driver, 10).until(lambda d: block.find_elements(By.CSS_SELECTOR, ".empty"))


def paint_stroke(
    driver: WebDriver, points: Sequence[tuple[float, float]], size: tuple[int, int], name: str | None = None
) -> None:
    """Paint with the brush through ``points``, (x, y) pixels of the editor's ``size`` (width, height) image.

    The editor shows its image centred on its canvas at the zoom it displays, so an image pixel maps to an
    offset from the canvas centre; a long segment is cut into moves of at most 20 screen pixels."""
    block = editor(driver, name)
    brush = block.find_element(By.CSS_SELECTOR, "button[aria-label=Brush]")
    if "highlight" not in brush.get_attribute("class").split():
        brush.click()
    canvas = block.find_element(By.CSS_SELECTOR, ".pixi-target canvas")
    zoom = float(block.find_element(By.CSS_SELECTOR, ".zoom-number").text.strip().rstrip("%")) / 100
    screen = [((x - size[0] / 2) * zoom, (y - size[1] / 2) * zoom) for x, y in points]
    chain = ActionChains(driver, duration=0).move_to_element_with_offset(canvas, *map(round, screen[0]))
    chain.click_and_hold()
    for (x0, y0), (x1, y1) in itertools.pairwise(screen):
        steps = max(1, int(max(abs(x1 - x0), abs(y1 - y0)) // 20))
        for k in range(1, steps + 1):
            x, y = x0 + (x1 - x0) * k / steps, y0 + (y1 - y0) * k / steps
            chain.move_to_element_with_offset(canvas, round(x), round(y))
    chain.release().perform()


def _shown(driver: WebDriver, path: str, what: str, timeout: float = 10) -> WebElement:
    """The first displayed element at XPath ``path``, waiting up to ``timeout`` seconds for one."""
    return WebDriverWait(driver, timeout, ignored_exceptions=[StaleElementReferenceException]).until(
        lambda d: next((e for e in d.find_elements(By.XPATH, path) if e.is_displayed()), None), f"no displayed {what}"
    )


def _thumbnails(driver: WebDriver, name: str) -> list[WebElement]:
    # The grid holds each image once; the preview strip (after a thumbnail is clicked) repeats them.
    return find(driver, name).find_elements(By.CSS_SELECTOR, ".grid-container button.thumbnail-item img")


def _literal(value: str) -> str:
    """``value`` as an XPath 1.0 string literal (which has no escapes)."""
    if "'" not in value:
        return f"'{value}'"
    return "concat(" + ', "\'", '.join(f"'{part}'" for part in value.split("'")) + ")"
