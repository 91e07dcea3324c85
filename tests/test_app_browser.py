"""The page in a real browser: `streamlit run` on a loopback port, driven by Debian's Chromium via Playwright."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SCREENSHOT_COPY = Path("/tmp/app_screenshot.png")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium "
                                                     "(apt-get install chromium; .ci/run does this)"),
]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, log: Path, timeout: float = 45.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"streamlit exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    pytest.fail(f"streamlit did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop(server: subprocess.Popen) -> None:
    """Stop the server's whole process group (it was started in its own session)."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)


@pytest.fixture
def server(trained_ckpt, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    port, log = free_port(), tmp_path / "streamlit.log"
    cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "streamlit_app.py"), "--server.port", str(port),
           "--server.headless", "true", "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
           "--", "--ckpt", str(trained_ckpt)]
    env = {**os.environ, "LUNGCNN_CKPT": ""}  # the --ckpt argument must be what selects the model
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc, log)
        yield playwright, url
    finally:
        stop(proc)


def test_upload_in_a_real_browser(server, tiny_root, tmp_path):
    playwright, url = server
    sample = sorted((tiny_root / "malignant").glob("*.png"))[0]
    scan, broken = tmp_path / "scan.png", tmp_path / "broken.jpg"
    shutil.copy(sample, scan)
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=30_000)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(30_000)
            page.goto(url, timeout=30_000)
            page.get_by_text("Decision support, not a diagnosis").first.wait_for()
            page.locator("input[type=file]").first.set_input_files([str(scan), str(broken)])
            metric = page.locator('[data-testid="stMetricValue"]').first
            metric.wait_for()
            assert re.fullmatch(r"(\d{1,2}\.\d%|< 0\.1%|> 99\.9%)", metric.inner_text().strip())
            page.get_by_text(re.compile(r"^(BENIGN|MALIGNANT)$")).first.wait_for()
            alert = page.locator('[data-testid="stAlert"]').filter(has_text="broken.jpg:")
            alert.first.wait_for()
            assert "JPEG" in alert.first.inner_text() or "corrupt" in alert.first.inner_text()
            page.get_by_text("Download results (CSV)").wait_for()
            # Streamlit scrolls inside its main container, so full_page alone shows one screen: grow the viewport.
            height = page.evaluate("document.querySelector('[data-testid=\"stMain\"]')?.scrollHeight ?? 900")
            page.set_viewport_size({"width": 1280, "height": max(900, min(int(height) + 40, 4000))})
            page.wait_for_timeout(500)  # let images finish painting before the screenshot
            shot = tmp_path / "app.png"
            page.screenshot(path=str(shot), full_page=True, timeout=30_000)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    shutil.copy(shot, SCREENSHOT_COPY)
