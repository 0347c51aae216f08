"""Make screenshots/09-web-page.png: the web page in headless Chromium
beside two terminal users (client.py and nc) in the same chat.

    .venv/bin/python screenshots/web_page.py   (from the repository root)

Needs what the browser test needs (Debian's chromium and chromium-driver,
selenium in the venv) and tmux. The terminals run in tmux; their screens
(with colours) are captured and drawn beside the page's screenshot by the
same Chromium. Everything runs on 127.0.0.1, on free ports; only the
processes this script started are stopped, by id.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

from test_browser import start_browser  # noqa: E402

OUT = os.path.join(ROOT, "screenshots", "09-web-page.png")
SESSION = f"chatshot{os.getpid()}"
WAIT_SECONDS = 15
COLOURS = {"31": "#ff6b6b", "33": "#ffd84d", "35": "#e58ee5",
           "36": "#4fd1d9"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], check=True, text=True,
                          capture_output=True).stdout


def screen(window: str, colours: bool = False) -> str:
    return tmux("capture-pane", "-p", *(["-e"] if colours else []),
                "-t", f"{SESSION}:{window}")


def wait_for(what: str, found) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not found():
        if time.monotonic() > deadline:
            raise SystemExit(f"web_page.py: timed out waiting for {what}")
        time.sleep(0.1)


def type_in(window: str, text: str) -> None:
    tmux("send-keys", "-t", f"{SESSION}:{window}", "-l", "--", text)
    tmux("send-keys", "-t", f"{SESSION}:{window}", "Enter")


def ansi_to_html(text: str) -> str:
    """A captured screen as HTML: the SGR colours client.py uses."""
    out, open_spans = [], 0
    for piece in re.split(r"(\x1b\[[0-9;]*m)", text.rstrip("\n")):
        if not piece.startswith("\x1b["):
            out.append(html.escape(piece))
            continue
        codes = piece[2:-1].split(";")
        if codes in (["0"], [""]):
            out.append("</span>" * open_spans)
            open_spans = 0
            continue
        style = []
        for code in codes:
            if code == "1":
                style.append("font-weight:bold")
            elif code == "2":
                style.append("color:#8a8f98")
            elif code == "4":
                style.append("text-decoration:underline")
            elif code in COLOURS:
                style.append(f"color:{COLOURS[code]}")
        out.append(f'<span style="{";".join(style)}">')
        open_spans += 1
    return "".join(out) + "</span>" * open_spans


def main() -> None:
    port, web_port = free_port(), free_port()
    log = open(os.path.join(tempfile.gettempdir(), f"{SESSION}.log"), "w")
    server = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "server.py"), "--port",
         str(port), "--web-port", str(web_port), "--admin-password", "pw"],
        stdout=log, stderr=subprocess.STDOUT)
    profile = tempfile.mkdtemp(prefix="chat-chromium-")
    driver = None
    try:
        time.sleep(0.5)  # the first client retries below anyway
        tmux("new-session", "-d", "-s", SESSION, "-x", "72", "-y", "16",
             "-n", "bob", f"sleep 0.5; {sys.executable} client.py --port"
             f" {port} --nick bob; sleep 60")
        tmux("new-window", "-t", SESSION, "-n", "erin",
             f"nc 127.0.0.1 {port}; sleep 60")
        tmux("resize-window", "-t", f"{SESSION}:erin", "-x", "72", "-y",
             "16")
        wait_for("bob", lambda: "Welcome, bob" in screen("bob"))
        wait_for("nc", lambda: "Choose a nickname" in screen("erin"))
        type_in("erin", "erin")
        wait_for("erin", lambda: "erin joined" in screen("bob"))
        driver = start_browser(profile)
        driver.set_window_size(820, 600)
        driver.get(f"http://127.0.0.1:{web_port}/")
        driver.find_element(By.ID, "nick").send_keys("alice", Keys.ENTER)
        wait_for("alice", lambda: "alice joined" in screen("erin"))
        say = driver.find_element(By.ID, "say")
        say.send_keys("hello from a browser, nothing installed!", Keys.ENTER)
        wait_for("alice's line", lambda: "nothing installed" in screen("bob"))
        type_in("bob", "welcome alice! try <b>this</b>")
        type_in("erin", "hi alice, I'm on plain nc")
        wait_for("erin's line", lambda: "plain nc" in screen("bob"))
        say.send_keys("-to bob thanks, it shows as text", Keys.ENTER)
        wait_for("the private line", lambda: "as text" in screen("bob"))
        type_in("bob", "-to alice :)")
        time.sleep(0.5)  # the page shows it; nothing to poll for there
        page = os.path.join(profile, "page.png")
        driver.save_screenshot(page)
        terminals = "".join(
            f'<figure><figcaption>{title}</figcaption><pre>'
            f'{ansi_to_html(screen(window, colours=True))}</pre></figure>'
            for window, title in (("bob", "terminal: python3 client.py"
                                   " --nick bob"),
                                  ("erin", f"terminal: nc 127.0.0.1"
                                   f" {port}")))
        composite = os.path.join(profile, "composite.html")
        with open(composite, "w", encoding="utf-8") as file:
            file.write(f"""<!doctype html><meta charset="utf-8"><style>
body {{ margin: 0; }}
#shot {{ padding: 14px; background: #e9ebef; display: inline-flex;
        align-items: flex-start; gap: 14px;
        font: 13px 'DejaVu Sans Mono', monospace; }}
figure {{ margin: 0; background: #16181c; color: #dcdcdc;
          border-radius: 6px; overflow: hidden; }}
figcaption {{ background: #3a3f4b; color: #fff; padding: 4px 10px;
              font-family: 'DejaVu Sans', sans-serif; }}
pre {{ margin: 0; padding: 6px 8px; font: inherit; line-height: 1.3; }}
img {{ display: block; }} .col {{ display: flex; flex-direction: column;
gap: 14px; }}
</style><div id="shot"><figure><figcaption>
browser: http://127.0.0.1:{web_port}/ (alice)</figcaption>
<img src="page.png"></figure>
<div class="col">{terminals}</div></div>""")
        driver.set_window_size(1700, 1000)
        driver.get("file://" + composite)
        driver.find_element(By.ID, "shot").screenshot(OUT)
        print(f"web_page.py: wrote {OUT}")
    finally:
        if driver is not None:
            driver.quit()
        subprocess.run(["tmux", "kill-session", "-t", SESSION],
                       capture_output=True)
        server.terminate()
        server.wait(10)
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
