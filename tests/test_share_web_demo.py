"""`llava serve`: the Gradio visual chat driven in a real headless Chromium through Playwright.

Needs Debian's `chromium` (apt-get install chromium chromium-driver) and the `playwright` Python
package (in the `dev` extra); Playwright launches the system browser, it downloads nothing.
The screenshot is written to tests/artifacts/web_demo.png (git-ignored).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image
from skimage import data

from conftest import REPO_ROOT
from hub_upload.export import export_model
from share_fixtures import save_tiny_training_output

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).parent / "artifacts"

# Records every text the last answer bubble shows, so the test can see the answer grow.
RECORD_ANSWER_TEXTS = """
() => {
  window.__answerTexts = [];
  const chat = document.querySelector('#llava-chat');
  const record = () => {
    const bots = chat.querySelectorAll('[data-testid="bot"]');
    if (!bots.length) return;
    const text = bots[bots.length - 1].innerText.trim();
    const seen = window.__answerTexts;
    if (text && seen[seen.length - 1] !== text) seen.push(text);
  };
  new MutationObserver(record).observe(chat, {subtree: true, childList: true, characterData: true});
}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not CHROMIUM.is_file() or shutil.which("chromedriver") is None:
        pytest.fail("the web demo test needs Debian's chromium: apt-get install -y chromium chromium-driver")
    work = tmp_path_factory.mktemp("web")
    model_dir = export_model(save_tiny_training_output(work / "run"), work / "tiny-llava")
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    log = open(work / "serve.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "llava_cli", "serve", "--model", str(model_dir), "--port", str(port),
         "--max-new-tokens", "40"], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while True:
        if process.poll() is not None:
            pytest.fail(f"llava serve exited with {process.returncode}:\n{(work / 'serve.log').read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline:
                process.terminate()
                pytest.fail(f"llava serve did not answer on {url} within 180 s")
            time.sleep(0.5)
    yield url, work
    process.terminate()
    process.wait(timeout=30)
    log.close()


def wait_until_answer_settles(page, count: int, quiet_ms: int = 2000, timeout_s: float = 120) -> str:
    """Wait for the `count`-th answer bubble to exist and stop changing; return its text."""
    page.wait_for_function(f"document.querySelectorAll('#llava-chat [data-testid=\"bot\"]').length >= {count}",
                           timeout=timeout_s * 1000)
    last, stable_since, deadline = None, time.monotonic(), time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = page.locator('#llava-chat [data-testid="bot"]').nth(count - 1).inner_text().strip()
        if text != last:
            last, stable_since = text, time.monotonic()
        elif text and time.monotonic() - stable_since > quiet_ms / 1000:
            return text
        page.wait_for_timeout(100)
    raise AssertionError(f"answer {count} never settled (last text {last!r})")


def test_upload_ask_and_see_a_streamed_answer(server):
    from playwright.sync_api import sync_playwright

    url, work = server
    photo = work / "astronaut.png"
    Image.fromarray(data.astronaut()).save(photo)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.goto(url)
            page.wait_for_selector("#llava-question textarea", timeout=60_000)
            page.locator("#llava-image input[type=file]").set_input_files(str(photo))
            page.wait_for_selector("#llava-image img", timeout=30_000)
            page.evaluate(RECORD_ANSWER_TEXTS)

            page.fill("#llava-question textarea", "What is in this photo?")
            page.click("#llava-send")
            first = wait_until_answer_settles(page, 1)
            texts = page.evaluate("window.__answerTexts")
            # Streamed: the page showed the answer growing (several partial texts, each a prefix of the next).
            assert len(texts) >= 3, texts
            assert texts[-1] == first
            assert all(later.startswith(earlier.rstrip()) for earlier, later in zip(texts, texts[1:])), texts
            assert page.locator('#llava-chat [data-testid="user"]').first.inner_text().strip() == "What is in this photo?"

            page.fill("#llava-question textarea", "What is she wearing?")
            page.keyboard.press("Enter")
            second = wait_until_answer_settles(page, 2)
            assert second and page.locator('#llava-chat [data-testid="user"]').count() == 2
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "web_demo.png"), full_page=True)
        finally:
            browser.close()
    assert (ARTIFACTS / "web_demo.png").stat().st_size > 10_000
