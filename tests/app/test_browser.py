"""End to end in a real browser: `netdiff app` on a free loopback port, Debian's headless
chromium driven by selenium. Upload a sample capture, convert it, train the tiny config, generate,
see the images and the validation summary, download the zip. The last screenshot is kept in
out/test-artifacts/ (or $NETDIFF_TEST_ARTIFACTS) as the test's artifact.

Skips when chromium, chromedriver, selenium or streamlit are absent (scripts/setup.sh installs
them, so CI runs it)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

import netdiff

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if not (CHROMIUM and DRIVER):
    pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)",
                allow_module_level=True)
pytest.importorskip("streamlit")
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import (ElementClickInterceptedException,  # noqa: E402
                                        NoSuchElementException, StaleElementReferenceException)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
# what a Streamlit rerun can do to an element between finding and using it
RERUN = (NoSuchElementException, StaleElementReferenceException, ElementClickInterceptedException)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def app(tmp_path):
    """`netdiff app` serving a temp workspace; its URL. The process group is stopped afterwards."""
    port = free_port()
    log = open(tmp_path / "app.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "netdiff.cli", "app", "--port", str(port), "--workspace",
                             str(tmp_path / "ws")], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "app.log").read_text()
            assert time.monotonic() < deadline, "the app did not come up in 60 s"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)


@pytest.fixture
def browser(tmp_path):
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    # the machine has no network: without these chromium stalls on its own background calls
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,2000"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=DRIVER))
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path / "dl")})
    yield driver
    driver.quit()


def body(d) -> str:
    return d.find_element(By.TAG_NAME, "body").text


def wait_text(d, text: str, timeout: float = 120) -> None:
    try:
        WebDriverWait(d, timeout, poll_frequency=0.5, ignored_exceptions=RERUN).until(lambda d: text in body(d))
    except Exception:
        raise AssertionError(f"{text!r} not on the page after {timeout} s; it shows:\n{body(d)[-3000:]}") from None


def wait_images(d, n: int, timeout: float = 30) -> None:
    """At least ``n`` images served by the app (a page's elements arrive one by one)."""
    try:
        WebDriverWait(d, timeout, poll_frequency=0.5, ignored_exceptions=RERUN).until(
            lambda d: len(d.find_elements(By.CSS_SELECTOR, "img[src*='media']")) >= n)
    except Exception:
        raise AssertionError(f"fewer than {n} images on the page after {timeout} s") from None


def click(d, label: str) -> None:
    """Click the button ``label``; tried again while a rerun replaces the element under us."""
    xpath = f"//button[normalize-space(.)='{label}']"

    def attempt(d):
        d.find_element(By.XPATH, xpath).click()
        return True

    WebDriverWait(d, 30, poll_frequency=0.3, ignored_exceptions=RERUN).until(attempt)


def type_into(d, label: str, value) -> None:
    """A text or number input, found by its label; Enter commits it as a person would."""
    css = f"input[aria-label='{label}']"

    def attempt(d):
        box = d.find_element(By.CSS_SELECTOR, css)
        if box.get_attribute("value") != str(value):
            box.send_keys(Keys.CONTROL, "a")
            box.send_keys(str(value), Keys.ENTER)
        return d.find_element(By.CSS_SELECTOR, css).get_attribute("value") == str(value)

    WebDriverWait(d, 30, poll_frequency=0.5, ignored_exceptions=RERUN).until(attempt)
    time.sleep(0.5)     # the rerun the new value starts


def artifact(d, name: str, heading: str) -> Path:
    """A screenshot of the page from ``heading`` down (Streamlit scrolls an inner pane, so the
    heading is scrolled to the top of the window)."""
    folder = Path(os.environ.get("NETDIFF_TEST_ARTIFACTS") or REPO / "out" / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    top = d.find_element(By.XPATH, f"//h2[normalize-space(.)='{heading}'] | //h3[normalize-space(.)='{heading}']")
    d.execute_script("arguments[0].scrollIntoView(true)", top)
    time.sleep(0.5)
    d.save_screenshot(str(folder / name))
    return folder / name


def test_upload_convert_train_generate_validate_download(app, browser, tmp_path):
    capture = netdiff.samples(tmp_path / "samples", seed=3, files_per_class=1)[0]     # web_tcp_0.pcap
    d = browser
    d.get(app)
    wait_text(d, "Add captures")
    type_into(d, "class", "web_tcp")
    d.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(capture))
    click(d, "Save upload")
    wait_text(d, "saved captures/uploads/web_tcp/web_tcp_0.pcap")
    click(d, "Convert to images")
    wait_text(d, "Protocols per class")
    wait_text(d, "nPrint images of web_tcp")
    wait_images(d, 1)                   # the first nPrint image
    artifact(d, "app-captures.png", "Protocols per class")

    d.find_element(By.XPATH, "//a[.//span[normalize-space(.)='Generate']]").click()
    wait_text(d, "Train a model")
    type_into(d, "steps", 2)
    click(d, "Train")
    wait_text(d, ": done")              # the train job's line
    wait_images(d, 1)                   # the loss curve
    type_into(d, "count", 2)
    type_into(d, "sampling steps", 2)
    click(d, "Generate")
    wait_text(d, "all packets valid")
    text = body(d)
    assert "generated (2)" in text and "real (2 shown)" in text
    wait_images(d, 5)                   # loss curve + 2 generated + 2 real
    shot = artifact(d, "app-generate.png", "Results")
    assert shot.stat().st_size > 10_000

    click(d, "Download pcaps (zip)")
    WebDriverWait(d, 30).until(lambda d: list((tmp_path / "dl").glob("*.zip")))
    names = zipfile.ZipFile(next((tmp_path / "dl").glob("*.zip"))).namelist()
    assert names == ["web_tcp/web_tcp_000000.pcap", "web_tcp/web_tcp_000001.pcap"]
