"""A real headless browser for the dashboard tests: Debian's ``chromium`` driven by Selenium
through Debian's ``chromium-driver`` (no browser download). Without them the test skips (fails
under CI=true, where ``.ci/run`` installs them), saying what to install."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .requires import require_program

CHROMIUM = os.environ.get("RELAY_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("RELAY_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
INSTALL = "apt-get install chromium chromium-driver"
DOCS_SCREENSHOTS = os.environ.get("RELAY_DOCS_SCREENSHOTS", "") == "1"
"""Set RELAY_DOCS_SCREENSHOTS=1 to have the dashboard test rewrite docs/img/ as well."""
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"


@contextlib.contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator[Any]:
    """A headless Chromium under Selenium; quit at the end."""
    require_program("chromium", INSTALL, path=CHROMIUM)
    require_program("chromedriver", INSTALL, path=CHROMEDRIVER)
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: Any, predicate: Callable[[Any], Any], what: str, timeout_s: float = 30) -> Any:
    """Until ``predicate(driver)`` is truthy (its value), or fail saying ``what`` and the page's text."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout_s, poll_frequency=0.1).until(predicate)
    except TimeoutException:
        text = driver.find_element("tag name", "body").text[-3000:]
        raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; the page says:\n{text}") from None


def screenshot(driver: Any, folder: Path, name: str, *, docs: bool = False) -> Path:
    """Save the page as ``folder/name.png`` (and, if ``docs``, in docs/img/ with RELAY_DOCS_SCREENSHOTS=1)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    height = driver.execute_script("return document.documentElement.scrollHeight")
    width = driver.execute_script("return document.documentElement.clientWidth")
    driver.set_window_size(max(width, 1400), min(max(height, 600), 4000))
    assert driver.save_screenshot(str(path)), f"no screenshot written to {path}"
    if docs and DOCS_SCREENSHOTS:
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        (DOCS_IMG / path.name).write_bytes(path.read_bytes())
    return path
