"""The browser console in a real headless Chromium (Debian's chromium + chromedriver, via selenium).

For a classifier, the detector and the segmenter, the test picks the model, uploads a bundled
sample image through the page's file input, and checks what the page drew: the answer's labels
in the DOM, a canvas with non-empty pixels, the latency shown. A screenshot of each is written to
the test's tmp directory (the path is printed) for a person to look at. scripts/ensure_chromium.sh
(run by `make test`) installs the browser; without it this test fails rather than skips.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from testkit import REPO_ROOT, ServerThread, copy_bundled_model, test_settings

IMAGES = REPO_ROOT / "examples" / "images"
BROWSER = os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium")
DRIVER = os.environ.get("CHROMEDRIVER_BIN", "/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def console_server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("console") / "repo"
    for name in ("lenet5", "gap_cnn", "yolo_grid", "fcn8s"):
        copy_bundled_model(name, repo)
    server = ServerThread(test_settings(repo, http_port=0)).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    assert Path(BROWSER).exists() and Path(DRIVER).exists(), "run scripts/ensure_chromium.sh (make test does)"
    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _canvas_pixels(driver) -> tuple[int, int, int]:
    """(width, height, pixels that are neither transparent nor white) of the console's canvas."""
    return tuple(
        driver.execute_script("""
        const c = document.getElementById('view');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i + 3] && (d[i] < 250 || d[i + 1] < 250 || d[i + 2] < 250)) n++;
        return [c.width, c.height, n];""")
    )


def _run(driver, url: str, model: str, image: Path, explain: bool = False):
    driver.get(url)
    wait = WebDriverWait(driver, 60)
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
    Select(driver.find_element(By.ID, "model")).select_by_value(model)
    if explain:
        driver.find_element(By.ID, "explain").click()
    driver.execute_script("document.body.dataset.state = 'idle'")
    driver.find_element(By.ID, "file").send_keys(str(image))
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error"))
    status = driver.find_element(By.ID, "status").text
    assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done", status


@pytest.mark.parametrize(
    "model,image,kind,expected_label",
    [
        ("lenet5", "digit_7.png", "prediction", "7"),
        ("yolo_grid", "object_scene.jpg", "detection", None),
        ("fcn8s", "scene_0.jpg", "area", "background"),
        ("gap_cnn", "object_scene.jpg", "prediction", "square"),
    ],
    ids=["classifier", "detector", "segmenter", "classifier-with-cam"],
)
def test_console_draws_the_answer(console_server, browser, tmp_path, model, image, kind, expected_label):
    explain = kind == "prediction" and model == "gap_cnn"
    _run(browser, console_server.http_url + "/", model, IMAGES / image, explain=explain)
    labels = [e.text for e in browser.find_elements(By.CSS_SELECTOR, f"#results .{kind} .label")]
    assert labels, browser.find_element(By.ID, "results").text
    if expected_label is not None:
        assert labels[0] == expected_label, labels  # classifier: the top class first; segmenter: class order
    if kind == "detection":
        assert all(re.fullmatch(r"[a-z]+", label) for label in labels)  # class names, drawn on the canvas too
    if explain:
        assert "heat map" in browser.find_element(By.ID, "results").text
    width, height, drawn = _canvas_pixels(browser)
    assert width > 0 and height > 0 and drawn > 0.05 * width * height
    assert re.fullmatch(r"\d+\.\d ms", browser.find_element(By.ID, "latency").text)
    assert '"inference_count"' in browser.find_element(By.ID, "stats").text
    assert model in browser.find_element(By.ID, "config").text
    shot = tmp_path / f"console-{model}.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


def test_console_shows_a_refusal(console_server, browser, tmp_path):
    """A file that is not an image: the server's precise refusal is shown, nothing crashes."""
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    browser.get(console_server.http_url + "/")
    WebDriverWait(browser, 60).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true"
    )
    Select(browser.find_element(By.ID, "model")).select_by_value("lenet5")
    browser.find_element(By.ID, "file").send_keys(str(junk))
    WebDriverWait(browser, 60).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "error"
    )
    assert (
        "could not be decoded" in browser.find_element(By.ID, "status").text
        or "decode" in browser.find_element(By.ID, "status").text.lower()
    )
