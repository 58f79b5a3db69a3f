"""Headless Chromium (Debian's `chromium` and `chromium-driver`, driven by Selenium; no browser download) for the
tests of report.html: open a page at 1280x800, what it loaded, what shows in its first screen.

    python -m tests.browser RUN/report.html docs/report.png    # the README's screenshot of a page
"""

from __future__ import annotations

import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
SCREEN = (1280, 800)


def why_no_browser() -> str | None:
    """None when a headless browser can run here, else why not (for pytest.skip)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    if not CHROMIUM or not CHROMEDRIVER:
        return "no chromium/chromedriver on PATH (apt-get install chromium chromium-driver; scripts/setup.sh does)"
    return None


@contextmanager
def browser(width: int = SCREEN[0], height: int = SCREEN[1]):
    """A headless Chromium whose viewport is width x height, its console logged."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                f"--window-size={width},{height}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
        driver.set_window_size(2 * width - inner[0], 2 * height - inner[1])  # the viewport, not the window
        yield driver
    finally:
        driver.quit()


def open_page(driver, page: Path) -> None:
    driver.get(Path(page).resolve().as_uri())
    driver.execute_script("return document.readyState")  # get() waits for the load event


def images(driver) -> list[dict]:
    """Every <img>: its alt text, natural width, whether it completed loading."""
    return driver.execute_script(
        "return Array.from(document.images).map(i => ({alt: i.alt, width: i.naturalWidth, complete: i.complete}))")


def console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def in_first_screen(driver, element_id: str) -> bool:
    """The element is displayed and lies whole inside the viewport of the page as opened (not scrolled)."""
    return driver.execute_script(
        "const e = document.getElementById(arguments[0]); if (!e) return false;"
        "const r = e.getBoundingClientRect(), s = getComputedStyle(e);"
        "return s.visibility !== 'hidden' && s.display !== 'none' && r.width > 0 && r.height > 0 &&"
        " r.top >= 0 && r.left >= 0 && r.bottom <= window.innerHeight && r.right <= window.innerWidth;", element_id)


def text_of(driver, element_id: str) -> str:
    return driver.execute_script("return document.getElementById(arguments[0]).innerText", element_id)


def screenshot(page: Path, out: Path, width: int = SCREEN[0], height: int = SCREEN[1]) -> None:
    with browser(width, height) as driver:
        open_page(driver, page)
        driver.save_screenshot(str(out))


if __name__ == "__main__":
    screenshot(Path(sys.argv[1]), Path(sys.argv[2]))
