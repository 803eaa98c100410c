"""The demo page in a real headless Chromium (Debian's, driven by Playwright): upload a cat, see a cat."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from app.keys import key_line
from stack.processes import Stack
from tests.images import CAT_LABELS, PHOTOS
from tests.integration.conftest import stack_settings

# Installed by `make test` (its test-tools target); Playwright's own browser download cannot work offline.
CHROMIUM = Path("/usr/bin/chromium")
# Headless, and nothing that reaches for the network: this machine has none, and the page needs none.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    # A missing browser fails the test: the demo page must be checked in every `make test`.
    assert CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK), \
        f"{CHROMIUM} missing: run `make test-tools` (apt-get install chromium)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 900, "height": 900})
    page = context.new_page()
    yield page
    context.close()


def watch_for_problems(page) -> list[str]:
    """Script errors, failed loads and error responses (a CSP violation is one) the page runs into from now on."""
    problems = []
    page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("requestfailed", lambda request: problems.append(f"failed: {request.url}"))
    return problems


def test_uploading_chelsea_shows_a_cat_with_its_probability_and_latency(service, page, tmp_path):
    problems = watch_for_problems(page)
    page.goto(service.url + "/")
    expect(page.locator("#model")).to_contain_text("efficientnet_lite0")

    page.set_input_files("#file", str(PHOTOS / "chelsea.png"))

    predictions = page.locator("#results .prediction")
    expect(predictions).to_have_count(5, timeout=30_000)
    labels = [label.strip() for label in predictions.locator(".label").all_inner_texts()]
    assert labels[0] in CAT_LABELS, labels
    assert re.fullmatch(r"\d+\.\d%", predictions.first.locator(".probability").inner_text())
    # Each bar is as long as its probability (once its transition is over).
    page.wait_for_function("""() => [...document.querySelectorAll('#results .prediction')].every(row => {
        const fill = row.querySelector('.fill').getBoundingClientRect().width;
        const bar = row.querySelector('.bar').getBoundingClientRect().width;
        return Math.abs(fill / bar * 100 - parseFloat(row.querySelector('.probability').textContent)) < 1;
    })""", timeout=5_000)
    expect(page.locator("#latency")).to_contain_text("ms round trip")
    expect(page.locator("#preview")).to_be_visible()
    assert page.locator("#preview").evaluate("image => image.naturalWidth") > 0  # the chosen image is shown

    screenshot = tmp_path / "demo-page.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
    print(f"screenshot: {screenshot}")
    assert problems == []


def test_a_file_that_is_not_an_image_shows_the_error(service, page, tmp_path):
    page.goto(service.url + "/")
    problems = watch_for_problems(page)
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("this is not an image")
    page.set_input_files("#file", str(not_an_image))
    expect(page.locator("#status")).to_contain_text("invalid_image", timeout=30_000)
    expect(page.locator("#status")).to_have_class(re.compile("error"))
    expect(page.locator("#results .prediction")).to_have_count(0)
    assert [p for p in problems if "status of 400" not in p] == []  # the 400 itself is the point


def test_several_images_go_in_one_request_and_each_gets_its_card(service, page, tmp_path):
    page.goto(service.url + "/")
    problems = watch_for_problems(page)
    requests = []
    page.on("request", lambda request: requests.append(request.url) if request.url.endswith("/predict") else None)
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("this is not an image")
    page.set_input_files("#file", [str(PHOTOS / "chelsea.png"), str(not_an_image), str(PHOTOS / "coffee.png")])
    cards = page.locator("#gallery .card")
    expect(cards).to_have_count(3, timeout=30_000)
    assert cards.nth(0).locator(".label").first.inner_text().strip() in CAT_LABELS
    expect(cards.nth(1).locator(".error")).to_contain_text("invalid_image")
    assert cards.nth(2).locator(".label").first.inner_text().strip() == "espresso"
    assert len(requests) == 1 and problems == []
    screenshot = tmp_path / "demo-several.png"
    page.screenshot(path=str(screenshot), full_page=True)
    print(f"screenshot: {screenshot}")


DEMO_KEY = "key-of-the-demo-page"


@pytest.fixture(scope="module")
def keyed_service(tmp_path_factory):
    """The service with API_KEYS_FILE set: every route the page calls needs a key, the page itself none."""
    keys_file = tmp_path_factory.mktemp("secret") / "api-keys"
    keys_file.write_text(key_line("demo", DEMO_KEY, None, None, None, "normal") + "\n")
    settings = stack_settings(api_keys_file=str(keys_file))
    with Stack(settings, workers=1, log_dir=tmp_path_factory.mktemp("logs")) as stack:
        yield stack


def test_a_person_pastes_a_key_and_the_page_uses_it_for_this_tab(keyed_service, page):
    page.goto(keyed_service.url + "/")
    expect(page.locator("#model")).to_contain_text("Paste an API key above", timeout=30_000)
    sent = []
    page.on("request", lambda request: sent.append(request.headers.get("authorization"))
            if request.url.endswith(("/predict", "/model")) else None)

    page.fill("#api-key", DEMO_KEY)
    page.dispatch_event("#api-key", "change")
    expect(page.locator("#model")).to_contain_text("efficientnet_lite0", timeout=30_000)
    page.set_input_files("#file", str(PHOTOS / "chelsea.png"))
    expect(page.locator("#results .prediction")).to_have_count(5, timeout=30_000)
    assert sent and set(sent) == {f"Bearer {DEMO_KEY}"}

    page.reload()  # kept for the tab (sessionStorage), not written anywhere else
    expect(page.locator("#model")).to_contain_text("efficientnet_lite0", timeout=30_000)
    assert page.evaluate("() => localStorage.length") == 0


def test_a_wrong_key_shows_the_refusal_not_a_prediction(keyed_service, page):
    page.goto(keyed_service.url + "/")
    page.fill("#api-key", "not-a-key")
    page.dispatch_event("#api-key", "change")
    expect(page.locator("#model")).to_contain_text("not valid", timeout=30_000)
    page.set_input_files("#file", str(PHOTOS / "chelsea.png"))
    expect(page.locator("#status")).to_contain_text("unauthorized", timeout=30_000)
    expect(page.locator("#results .prediction")).to_have_count(0)
