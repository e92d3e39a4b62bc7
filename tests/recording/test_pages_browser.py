"""The recordings pages in a real browser: Debian's Chromium, headless, driven by Selenium over
chromium-driver, against the real service on a loopback port. Sign in, search by tag, open a
leg, play it and seek by clicking the waveform (the audio element's time moves; the server saw
Range requests), another agent's leg by its URL is a 404, a hold without its CSRF token is
refused (and with it done), sign out.

With RECORDING_SCREENSHOTS=<folder>, the list and the leg's page are saved there as PNGs.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.fake_asterisk import FakeAsterisk
from tests.recording.pages_support import PASSWORDS, give_passwords
from tests.recording.test_recording_download import recorded_call
from tests.service_runner import RunningService

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="chromium and chromium-driver are not installed (apt-get install chromium chromium-driver; .ci/run does)",
)
WAIT = 20


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", "--autoplay-policy=no-user-gesture-required", "--mute-audio",
                     "--window-size=1280,1000", f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}"):
        options.add_argument(argument)
    # NOTE: the driver's path is given, so Selenium Manager never looks for one on the network.
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def site(store, people, files_settings):
    give_passwords(store)
    with RunningService(files_settings.with_(pages_listen="127.0.0.1:0")) as running:
        yield running


def wait(driver, condition, what: str):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # NOTE: while a form's answer loads, an element found on the old page goes stale: look again.
    return WebDriverWait(driver, WAIT, poll_frequency=0.1,
                         ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)
                         ).until(condition, message=f"waited {WAIT}s for {what}")


def sign_in(driver, base: str, login: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/recordings/legs")
    wait(driver, lambda d: "/recordings/sign-in" in d.current_url, "the sign-in form")
    driver.find_element(By.ID, "login").send_keys(login)
    driver.find_element(By.ID, "password").send_keys(PASSWORDS[login])
    driver.find_element(By.ID, "sign-in").click()
    # NOTE: the list's URL can be current before its page is in the DOM (under load, in CI): wait
    # for the signed-in name itself, and show the page that came instead if it never does.
    try:
        wait(driver, lambda d: d.current_url.endswith("/recordings/legs") and d.find_element(By.ID, "who").text == login,
             f"the list after signing in as {login}")
    except Exception as exc:
        raise AssertionError(f"{exc}\nat {driver.current_url}:\n{driver.page_source[:4000]}") from exc


def lengthen(path: Path, times: int) -> None:
    """Makes the recording ``times`` as long (its audio over again): 20 minutes is more than a
    player fetches ahead, so a seek far into it is a Range request of its own."""
    from tests.fake_asterisk import WAV_HEADER_BYTES, wav_header

    audio = path.read_bytes()[WAV_HEADER_BYTES:]
    with open(path, "r+b") as handle:
        handle.write(wav_header(len(audio) * times))
        handle.seek(0, 2)
        for _ in range(times - 1):
            handle.write(audio)


def shoot(driver, name: str) -> None:
    folder = os.environ.get("RECORDING_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / name))


def test_sign_in_find_play_seek_hold_and_sign_out_in_chromium(site, store, browser, caplog):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    caplog.set_level(logging.INFO, logger="recording.pages")
    pbx = FakeAsterisk(site.port, filesystem=Path("/"))
    call, freds = recorded_call(pbx, store, seconds=60.0, agent="fred", tag="CRM-B1")
    lengthen(Path(call.variables["RECORDING_FILE"]), 20)
    recorded_call(pbx, store, seconds=1.0, agent="fred", tag="CRM-other")
    _, anns = recorded_call(pbx, store, seconds=1.0, agent="ann", tag="CRM-B2")
    base = f"http://127.0.0.1:{site.app.pages_port}"

    sign_in(browser, base, "fred")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#legs tbody tr")) == 2  # fred's two, not ann's
    browser.find_element(By.ID, "tag").send_keys("CRM-B1")
    browser.find_element(By.ID, "search").click()
    wait(browser, lambda d: "tag=CRM-B1" in d.current_url, "the search's URL")
    rows = browser.find_elements(By.CSS_SELECTOR, "#legs tbody tr")
    assert len(rows) == 1 and "CRM-B1" in rows[0].text
    shoot(browser, "pages-list.png")
    rows[0].find_element(By.CSS_SELECTOR, "a.open").click()
    wait(browser, lambda d: d.current_url.endswith(f"/recordings/legs/{freds.id}") and d.find_element(By.ID, "player"),
         "the leg's page")

    # Play: the element's time advances.
    started = browser.execute_async_script(
        "const done = arguments[arguments.length - 1]; const a = document.getElementById('player');"
        "a.play().then(() => done('playing')).catch(e => done('refused: ' + e));")
    assert started == "playing"
    wait(browser, lambda d: d.execute_script("return document.getElementById('player').currentTime") > 0.3,
         "the audio to play")
    # Seek by clicking the waveform at 80%: the player jumps there and plays on.
    wave = browser.find_element(By.ID, "wave")
    ActionChains(browser).move_to_element_with_offset(wave, int(wave.size["width"] * 0.3), 0).click().perform()
    wait(browser, lambda d: d.execute_script("return document.getElementById('player').currentTime") > 900,
         "the player at the clicked place")
    at = browser.execute_script("return document.getElementById('player').currentTime")
    wait(browser, lambda d: d.execute_script("return document.getElementById('player').currentTime") > at + 0.2,
         "the audio to play on after the seek")
    shoot(browser, "pages-leg.png")
    ranges = [r.getMessage() for r in caplog.records
              if f"/recordings/legs/{freds.id}/audio" in r.getMessage() and "status=206" in r.getMessage()]
    assert ranges and all("range=bytes=" in line for line in ranges), ranges
    assert any("range=bytes=0-" not in line for line in ranges), f"no Range past the start: {ranges}"

    # Another agent's leg, typed into the address bar: a 404 page.
    browser.get(f"{base}/recordings/legs/{anns.id}")
    assert browser.find_element(By.TAG_NAME, "h1").text == "404"
    assert f"no recording leg {anns.id} that you may see" in browser.find_element(By.ID, "sentence").text

    # Sign out, and in as a Recording Manager: a hold whose form lost its CSRF token is refused.
    browser.get(f"{base}/recordings/legs")
    browser.find_element(By.ID, "sign-out").click()
    wait(browser, lambda d: "/recordings/sign-in" in d.current_url, "the sign-in page after signing out")
    sign_in(browser, base, "boss")
    browser.get(f"{base}/recordings/legs/{freds.id}")
    browser.execute_script("document.querySelector('#hold-form input[name=csrf]').remove();")
    browser.find_element(By.ID, "reason").send_keys("case 77")
    browser.find_element(By.ID, "hold").click()
    wait(browser, lambda d: d.find_element(By.TAG_NAME, "h1").text == "403", "the refusal")
    assert "CSRF token is missing or wrong" in browser.find_element(By.ID, "sentence").text
    assert store.leg(freds.id).held is False
    browser.get(f"{base}/recordings/legs/{freds.id}")
    browser.find_element(By.ID, "reason").send_keys("case 77")
    browser.find_element(By.ID, "hold").click()
    wait(browser, lambda d: "held since" in d.find_element(By.ID, "hold-state").text, "the hold")
    assert store.leg(freds.id).hold_reason == "case 77"
    assert "case 77" in browser.find_element(By.ID, "audit").text

    browser.find_element(By.ID, "sign-out").click()
    wait(browser, lambda d: "/recordings/sign-in" in d.current_url, "the sign-in page")
    browser.get(f"{base}/recordings/legs/{freds.id}")
    assert "/recordings/sign-in" in browser.current_url  # the session is over
