"""The page in a real browser: headless Chromium, driven by selenium,
joins the chat and talks with a TCP user; a peer's HTML arrives as text.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs
them); without them the test is skipped, and says why.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Iterator

import pytest

import protocol
from helpers import DEADLINE

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

#: Where Debian puts the browser and its driver.
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
#: Flags for a headless browser that works as root, in a container, and
#: reaches nothing but the server under test.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-quic", "--no-first-run",
                  "--disable-background-networking",
                  "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1000,700")


def start_browser(profile: str):
    """A headless Chromium through chromedriver (Debian's), or skip."""
    if not CHROMIUM or not CHROMEDRIVER:
        pytest.skip("chromium and chromium-driver are not installed"
                    " (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    try:
        return webdriver.Chrome(service=Service(CHROMEDRIVER),
                                options=options)
    except WebDriverException as error:
        pytest.skip(f"chromium would not start: {error.msg}")


@pytest.fixture
def browser() -> Iterator[object]:
    profile = tempfile.mkdtemp(prefix="chat-chromium-")
    driver = start_browser(profile)
    driver.set_page_load_timeout(DEADLINE)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def page_lines(driver) -> list:
    return [item.text for item in
            driver.find_elements(By.CSS_SELECTOR, "#lines li")]


def wait_for_line(driver, text: str) -> None:
    WebDriverWait(driver, DEADLINE).until(
        lambda d: text in page_lines(d),
        f"{text!r} not on the page")


def test_a_browser_user_chats_with_a_terminal_user(make_server, clients,
                                                   browser):
    server = make_server(web_port=0, history=5)
    bob = clients(server, "bob")
    carol = clients(server, "carol")
    bob.expect(protocol.format_joined("carol"))
    bob.send("before you came")
    carol.expect(protocol.format_message("bob", "before you came"))
    host, port = server.web.server_address[:2]
    browser.get(f"http://{host}:{port}/")
    nick = browser.find_element(By.ID, "nick")
    nick.send_keys("alice", Keys.ENTER)
    bob.expect(protocol.format_joined("alice"))
    # History, dimmed; the user list; the partner indicator.
    WebDriverWait(browser, DEADLINE).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#lines li.history"))
    WebDriverWait(browser, DEADLINE).until(
        lambda d: d.find_element(By.ID, "count").text == "3")
    assert browser.find_element(By.ID, "prompt").text == "[everyone]>"
    say = browser.find_element(By.ID, "say")
    say.send_keys("hello from Chromium", Keys.ENTER)
    bob.expect(protocol.format_message("alice", "hello from Chromium"))
    # A peer's HTML is text: no element made, no script run.
    attack = '<img src=x onerror="document.title=\'owned\'"><b>bold</b>'
    bob.send(attack)
    wait_for_line(browser, protocol.format_message("bob", attack))
    assert not browser.find_elements(By.CSS_SELECTOR, "#lines img, #lines b")
    assert browser.title != "owned"
    # Tab completes a flag and a nickname; a private line, its partner.
    say.send_keys("-t", Keys.TAB, "b", Keys.TAB)
    assert say.get_attribute("value") == "-to bob "
    say.send_keys(Keys.ENTER)
    WebDriverWait(browser, DEADLINE).until(
        lambda d: d.find_element(By.ID, "prompt").text == "[to bob]>")
    say.send_keys("just for you", Keys.ENTER)
    bob.expect(protocol.format_private("alice", "just for you"))
    # The server's copy takes the typed line's place.
    wait_for_line(browser, protocol.format_private_sent("bob",
                                                        "just for you"))
    assert "[to bob]> just for you" not in [
        item.text for item in browser.find_elements(By.CSS_SELECTOR,
                                                     "#lines li")]
    bob.send("-to alice and back")
    wait_for_line(browser, protocol.format_private("bob", "and back"))
    private = [item for item in
               browser.find_elements(By.CSS_SELECTOR, "#lines li.private")]
    assert private
    # Up recalls what was typed.
    say.send_keys(Keys.ARROW_UP)
    assert say.get_attribute("value") == "just for you"
    assert not [entry for entry in browser.get_log("browser")
                if entry["level"] == "SEVERE"]


def test_a_line_over_the_limit_is_refused_by_the_page(make_server, clients,
                                                     browser):
    """The page learns --max-line from the server and does not send a
    longer line (counted in UTF-8 bytes, as the server counts): it says
    so, and leaves the line in the box to be shortened."""
    server = make_server(web_port=0, max_line=100)
    bob = clients(server, "bob")
    host, port = server.web.server_address[:2]
    browser.get(f"http://{host}:{port}/")
    browser.find_element(By.ID, "nick").send_keys("alice", Keys.ENTER)
    bob.expect(protocol.format_joined("alice"))
    say = browser.find_element(By.ID, "say")
    WebDriverWait(browser, DEADLINE).until(
        lambda d: say.get_attribute("data-max-bytes") == "100")
    long_line = "ж" * 51  # 51 characters, 102 bytes
    say.send_keys(long_line, Keys.ENTER)
    WebDriverWait(browser, DEADLINE).until(
        lambda d: any("not sent: the line is 102 bytes, over the server's"
                      " limit of 100" in line for line in page_lines(d)))
    assert say.get_attribute("value") == long_line
    say.clear()
    say.send_keys("ж" * 50, Keys.ENTER)  # 100 bytes: sent
    bob.next_is(protocol.format_message("alice", "ж" * 50))
