"""The web page at /ui in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``) driven by selenium against the test run's real ``bentoml serve``,
its answers checked against the JSON API's for the same input, N and seed.

The browser tests skip when Chromium or its driver is missing (``.ci/run`` installs
them). ``UQ_UI_SCREENSHOT=PATH`` also saves the page with the test model's answer at
desktop and phone widths (the docs' screenshots show the default model: docs/ui.md).
"""

import io
import os
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

from training.data import load_dataset

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT_SECONDS = 30
#: Chromium reaches nothing but the loopback server: no updates, no telemetry, and a
#: proxy that goes nowhere for any other host (loopback bypasses proxies).
CHROMIUM_ARGUMENTS = (
    "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
    "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-default-apps",
    "--disable-extensions", "--disable-domain-reliability", "--no-pings",
    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
    "--proxy-server=http://127.0.0.1:9", "--window-size=1280,1000",
)


@pytest.fixture(scope="module")
def browser(server):
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing and not os.environ.get("CI"):  # in CI, .ci/run installs them: fail instead
        pytest.skip(f"the web page's browser tests need Debian's chromium and chromium-driver "
                    f"({', '.join(missing)} missing): apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in CHROMIUM_ARGUMENTS:
        options.add_argument(argument)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SE_AVOID_STATS", "true")  # selenium: no usage statistics
        driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)),
                                  options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser, server):
    """The page, loaded afresh, once it has read the model card."""
    browser.get(f"{server}/ui")
    WebDriverWait(browser, WAIT_SECONDS).until(
        lambda driver: driver.find_element(By.TAG_NAME, "body").get_attribute("data-ready")
    )
    return browser


@pytest.fixture(scope="module")
def digit_png(tmp_path_factory) -> Path:
    """A digits test image as an 8 x 8 grayscale PNG (0..16 scaled to 0..255)."""
    digit = load_dataset("digits").x_test[11]
    path = tmp_path_factory.mktemp("ui") / "digit.png"
    Image.fromarray(np.round(digit * (255 / 16)).astype(np.uint8)).save(path)
    return path


def by_id(driver, element_id: str):
    return driver.find_element(By.ID, element_id)


def requests_done(driver) -> int:
    return int(by_id(driver, "result").get_attribute("data-request") or 0)


def wait_for_result(driver, after: int) -> None:
    """Until the page shows the answer to a request newer than ``after``."""
    def shown(driver):
        result = by_id(driver, "result")
        return result.get_attribute("data-state") == "ready" and requests_done(driver) > after
    WebDriverWait(driver, WAIT_SECONDS).until(shown)


def chosen(driver) -> tuple[int, int]:
    """The N and seed the page asks for."""
    n_samples = int(Select(by_id(driver, "n-samples")).first_selected_option.get_attribute("value"))
    return n_samples, int(by_id(driver, "seed").get_attribute("value"))


def read_plot(driver, read):
    """``read(driver)`` of the sample plot, read again when the page redraws the plot
    under it (its ResizeObserver redraws it when the layout settles after an answer)."""
    return WebDriverWait(driver, WAIT_SECONDS,
                         ignored_exceptions=[StaleElementReferenceException]).until(
        lambda driver: (read(driver),))[0]


def marks_per_class(driver) -> list[int]:
    return read_plot(driver, lambda driver: [
        len(row.find_elements(By.CSS_SELECTOR, "circle.sample-mark"))
        for row in driver.find_elements(By.CSS_SELECTOR, "#sample-plot .class-row")])


def mark_positions(driver) -> list[str]:
    return read_plot(driver, lambda driver: [
        mark.get_attribute("cx")
        for mark in driver.find_elements(By.CSS_SELECTOR, "#sample-plot .sample-mark")])


def predict_image(http, path: Path, n_samples: int, seed: int) -> httpx.Response:
    return http.post(
        "/predict_image",
        files={"image": (path.name, path.read_bytes(), "image/png")},
        data={"n_samples": str(n_samples), "seed": str(seed), "return_samples": "true"},
    )


def test_the_page_and_its_files_are_served(http):
    page = http.get("/ui")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert 'src="ui/app.js"' in page.text
    for asset, media_type in (("app.js", "javascript"), ("style.css", "text/css"),
                              ("examples/examples.json", "application/json")):
        response = http.get(f"/ui/{asset}")
        assert response.status_code == 200, asset
        assert media_type in response.headers["content-type"]
    assert http.get("/ui/").headers["location"] == "../ui"
    # the folder's other files and unknown paths are not served; errors keep the API's shape
    for missing in ("/ui/webui.py", "/ui/nothing.js"):
        response = http.get(missing)
        assert response.status_code == 404
        assert "error" in response.json()


def test_an_uploaded_png_shows_the_apis_answer(page, http, digit_png):
    by_id(page, "file-input").send_keys(str(digit_png))
    wait_for_result(page, 0)
    n_samples, seed = chosen(page)
    response = predict_image(http, digit_png, n_samples, seed)
    assert response.status_code == 200, response.text
    answer = response.json()["predictions"][0]

    assert by_id(page, "predicted-class").text == answer["class_name"]
    assert by_id(page, "confidence").text.startswith(f"{100 * answer['confidence']:.1f}%")
    assert by_id(page, "result-n").text == str(n_samples) == str(answer["n_samples"])
    assert by_id(page, "result-seed").text == str(seed)
    assert by_id(page, "result-latency").text.endswith("ms")
    assert marks_per_class(page) == [n_samples] * len(answer["probabilities"])
    shown_means = read_plot(page, lambda driver: [
        row.text for row in driver.find_elements(By.CSS_SELECTOR, ".class-value")])
    assert shown_means == [f"{mean:.3f} ± {std:.3f}"
                           for mean, std in zip(answer["probabilities"], answer["std"],
                                                strict=True)]
    badge = by_id(page, "risk-badge").text
    assert badge.startswith("Flagged") if answer["risk"]["flagged"] else badge == "Not flagged"
    chips = [chip.text for chip in page.find_elements(By.CSS_SELECTOR, "#prediction-set li")]
    assert chips == answer["prediction_set"]
    assert len(page.find_elements(By.CSS_SELECTOR, "#risk-rows tr")) == 2
    assert len(page.find_elements(By.CSS_SELECTOR, "#entropies .entropy")) == 3


def test_a_change_of_n_redraws_the_samples(page):
    options = [int(option.get_attribute("value"))
               for option in Select(by_id(page, "n-samples")).options]
    first, _ = chosen(page)
    second = max(n for n in options if n != first and n <= 50)
    page.find_element(By.CSS_SELECTOR, "#examples .example").click()  # a bundled example
    wait_for_result(page, 0)
    assert set(marks_per_class(page)) == {first}
    before = mark_positions(page)

    done = requests_done(page)
    Select(by_id(page, "n-samples")).select_by_value(str(second))
    wait_for_result(page, done)
    assert by_id(page, "result-n").text == str(second)
    assert set(marks_per_class(page)) == {second}
    assert mark_positions(page) != before
    current = page.find_element(By.CSS_SELECTOR, "#calibration-table tr.current")
    assert current.get_attribute("data-n") == str(second)


def test_a_file_that_is_not_an_image_shows_the_services_error(page, http, tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not an image at all")
    n_samples, seed = chosen(page)
    response = predict_image(http, junk, n_samples, seed)
    assert response.status_code == 400
    by_id(page, "file-input").send_keys(str(junk))
    error = by_id(page, "error")
    WebDriverWait(page, WAIT_SECONDS).until(lambda driver: error.is_displayed())
    assert error.text == response.json()["error"]
    assert not by_id(page, "result").is_displayed()


def test_the_model_card_says_what_shape_uploads_are_read_at(page):
    facts = by_id(page, "card-facts").get_attribute("textContent")
    assert "8 × 8, values 0 to 16; images read at 8 × 8" in facts


def test_drawing_with_the_keyboard_predicts_the_drawing(page, http):
    canvas = by_id(page, "draw-canvas")
    canvas.send_keys(Keys.SPACE, Keys.ARROW_RIGHT, Keys.SPACE, Keys.ARROW_DOWN, Keys.SPACE)
    wait_for_result(page, 0)
    n_samples, seed = chosen(page)
    card = http.post("/metadata", json={}).json()
    high = card["value_range"][1]
    instance = np.full(card["input_shape"], card["value_range"][0])
    instance[0, 0] = instance[0, 1] = instance[1, 1] = high  # the three painted pixels
    response = http.post("/predict", json={"instances": [instance.tolist()],
                                           "n_samples": n_samples, "seed": seed})
    assert response.status_code == 200, response.text
    assert by_id(page, "predicted-class").text == response.json()["predictions"][0]["class_name"]
    assert by_id(page, "preview-name").text == "your drawing"
    assert set(marks_per_class(page)) == {n_samples}


def test_the_generate_view_shows_samples_and_their_flags(page, http):
    tab = by_id(page, "tab-generate")
    assert tab.is_displayed()  # the test run's server has a generator
    tab.click()
    count = int(Select(by_id(page, "generate-count")).first_selected_option.text)
    by_id(page, "generate-button").click()
    WebDriverWait(page, WAIT_SECONDS).until(
        lambda driver: len(driver.find_elements(By.CSS_SELECTOR, ".generated-sample")) == count
    )
    n_samples, seed = chosen(page)
    answer = http.post("/generate", json={"count": count, "n_samples": n_samples,
                                          "seed": seed}).json()
    shown = page.find_elements(By.CSS_SELECTOR, ".generated-sample")
    for item, sample in zip(shown, answer["samples"], strict=True):
        prediction = sample["prediction"]
        assert item.find_element(By.CLASS_NAME, "generated-class").text.startswith(
            f"{prediction['class_name']} · ")
        badge = item.find_element(By.CLASS_NAME, "badge").text
        assert badge.startswith("Flagged") == prediction["risk"]["flagged"]

    shown[0].find_element(By.TAG_NAME, "button").click()  # Inspect: its samples, plotted
    wait_for_result(page, 0)
    assert by_id(page, "predict-view").is_displayed()
    assert by_id(page, "predicted-class").text == answer["samples"][0]["prediction"]["class_name"]
    assert set(marks_per_class(page)) == {n_samples}


@pytest.mark.skipif(not os.environ.get("UQ_UI_SCREENSHOT"),
                    reason="UQ_UI_SCREENSHOT=PATH saves a screenshot of the page")
def test_screenshot(page, http):
    """The page with a real answer at desktop width and, beside it, at phone width; at an
    N whose risk threshold flags some answers but not all, if the model has one."""
    calibrations = http.post("/metadata", json={}).json()["calibrations"]
    selective = [calibration["n_samples"] for calibration in calibrations
                 if calibration["risk_policy"]["threshold"] >= 0]
    closest_to_30 = min((calibration["n_samples"] for calibration in calibrations),
                        key=lambda n: abs(n - 30))
    n_samples = max([n for n in selective if n <= 50] or [closest_to_30])
    desktop = _screenshot_with_result(page, n_samples, width=1280)
    phone = _screenshot_with_result(page, n_samples, width=390, height=desktop.height,
                                    mobile=True)
    gap = 32
    sheet = Image.new("RGB", (desktop.width + gap + phone.width,
                              max(desktop.height, phone.height)), "#d5d9df")
    sheet.paste(desktop, (0, 0))
    sheet.paste(phone, (desktop.width + gap, 0))
    sheet.save(os.environ["UQ_UI_SCREENSHOT"], optimize=True)


def _screenshot_with_result(driver, n_samples: int, width: int, height: int | None = None,
                            mobile: bool = False) -> Image.Image:
    def emulate(emulated_height: int) -> None:
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": emulated_height, "deviceScaleFactor": 1, "mobile": mobile,
        })

    emulate(height or 1000)
    driver.refresh()
    WebDriverWait(driver, WAIT_SECONDS).until(
        lambda driver: driver.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
    Select(by_id(driver, "n-samples")).select_by_value(str(n_samples))
    done = requests_done(driver)
    driver.find_elements(By.CSS_SELECTOR, "#examples .example")[2].click()
    wait_for_result(driver, done)
    if mobile:  # the result, as a phone shows it after scrolling to it
        driver.execute_script("document.getElementById('views').scrollIntoView()")
    else:
        emulate(driver.execute_script("return document.documentElement.scrollHeight"))
    image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    return image
