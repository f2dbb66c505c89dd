"""A minimal W3C WebDriver client for headless Chromium (chromedriver over HTTP, urllib only).

Debian's ``chromium`` and ``chromium-driver`` packages provide ``/usr/bin/chromium`` and
``/usr/bin/chromedriver`` (``.ci/run`` installs them when missing). :func:`find_browser` returns
both paths, or None with the reason when they are not installed.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

#: WebDriver key codes (W3C "keys" table)
KEYS = {"ArrowDown": "\ue015", "ArrowUp": "\ue013", "Enter": "\ue007", "Escape": "\ue00c", "Delete": "\ue017"}


def find_browser() -> tuple[str, str] | tuple[None, str]:
    """(chromium, chromedriver) paths, or (None, why) when either is missing."""
    browser = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver") or next(
        (p for p in ("/usr/lib/chromium/chromedriver", "/usr/bin/chromedriver") if os.path.isfile(p)), None)
    if browser is None or driver is None:
        missing = [n for n, p in (("chromium", browser), ("chromedriver", driver)) if p is None]
        return None, (f"{' and '.join(missing)} not installed (Debian: apt-get install -y chromium chromium-driver; "
                      f".ci/run installs them)")
    return browser, driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Chrome:
    """A headless Chromium session; downloads go to ``download_dir``."""

    def __init__(self, download_dir: str, width: int = 1400, height: int = 1000, timeout: float = 60.0):
        found = find_browser()
        if found[0] is None:
            raise RuntimeError(found[1])
        browser, driver = found
        self.port = _free_port()
        self.profile = tempfile.mkdtemp(prefix="dhs-chrome-")
        self.proc = subprocess.Popen([driver, f"--port={self.port}"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{self.port}"
        t0 = time.monotonic()
        while True:
            try:
                if self._call("GET", "/status").get("ready"):
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.monotonic() - t0 > timeout or self.proc.poll() is not None:
                self.close()
                raise RuntimeError(f"chromedriver {driver} did not start within {timeout} s")
            time.sleep(0.1)
        opts = {"binary": browser,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         f"--window-size={width},{height}", f"--user-data-dir={self.profile}",
                         "--no-first-run", "--no-default-browser-check", "--hide-scrollbars",
                         # no network: a page that needed one would show broken images
                         "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND"],
                "prefs": {"download.default_directory": download_dir, "download.prompt_for_download": False,
                          "download.directory_upgrade": True}}
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": opts}}}
        try:
            self.session = self._call("POST", "/session", caps)["sessionId"]
            self.cdp("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": download_dir})
        except Exception:
            self.close()
            raise

    def _call(self, method: str, path: str, body: dict | None = None, timeout: float = 120.0):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                out = json.loads(r.read().decode() or "{}")
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"WebDriver {method} {path}: {e.code} {e.read().decode()[:500]}") from None
        return out.get("value", out)

    def _s(self, path: str) -> str:
        return f"/session/{self.session}{path}"

    def cdp(self, cmd: str, params: dict) -> dict:
        return self._call("POST", self._s("/goog/cdp/execute"), {"cmd": cmd, "params": params})

    def get(self, url: str) -> None:
        self._call("POST", self._s("/url"), {"url": url})

    def execute(self, script: str, *args):
        return self._call("POST", self._s("/execute/sync"), {"script": script, "args": list(args)})

    def wait_for(self, script: str, timeout: float = 30.0, *args):
        t0 = time.monotonic()
        while True:
            v = self.execute(script, *args)
            if v:
                return v
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"condition not met within {timeout} s: {script}")
            time.sleep(0.05)

    def press(self, *keys: str) -> None:
        """Real key events (keyDown + keyUp per key) to the focused element; names of :data:`KEYS` or characters."""
        acts = []
        for k in keys:
            v = KEYS.get(k, k)
            for ch in ([v] if k in KEYS else list(v)):
                acts += [{"type": "keyDown", "value": ch}, {"type": "keyUp", "value": ch}]
        self._call("POST", self._s("/actions"), {"actions": [{"type": "key", "id": "keyboard", "actions": acts}]})
        self._call("DELETE", self._s("/actions"))

    def screenshot(self, path: str) -> None:
        png = base64.b64decode(self._call("GET", self._s("/screenshot")))
        with open(path, "wb") as fh:
            fh.write(png)

    def close(self) -> None:
        try:
            if getattr(self, "session", None):
                self._call("DELETE", self._s(""), timeout=30)
        except Exception:
            pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Chrome":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def screenshot_page(page: str, png: str, width: int = 1400, height: int = 900) -> None:
    """The README's picture of the inspection page: grade the first candidates with the keyboard
    (A, X, then C with a note) and take a screenshot. The grades live in a throw-away profile."""
    with tempfile.TemporaryDirectory() as dl, Chrome(dl, width, height) as c:
        c.get("file://" + os.path.abspath(page))
        c.wait_for("return document.body.dataset.ready === '1'")
        c.press("a", "x", "n")
        c.wait_for("return document.activeElement.id === 'noteinput'")
        c.press("faint arc to the NE?", "Enter", "c")
        c.execute("window.scrollTo(0, 0)")
        c.wait_for("return [...document.images].every(i => i.complete)")
        c.screenshot(png)


if __name__ == "__main__":  # python tests/search/_webdriver.py data/search/inspect/index.html docs/search_inspect.png
    import sys

    screenshot_page(sys.argv[1], sys.argv[2])
