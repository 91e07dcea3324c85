"""The page in a real browser: started as `make app` starts it (on a loopback port, a password configured), driven by
Debian's Chromium via Playwright: sign-in, uploads (one a DICOM with patient tags), the CSV download, the server log."""

from __future__ import annotations

import contextlib
import re
import shutil
from pathlib import Path

import pytest

from lungcnn.webapp.auth import hash_password
from tests.pagekit import (
    PASSWORD,
    SSO_USER,
    OIDCProvider,
    dicom,
    free_port,
    launch,
    patient_values_in,
    project_dir,
    stop,
    wait_healthy,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SCREENSHOT_COPY = Path("/tmp/app_screenshot.png")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium "
                                                     "(apt-get install chromium; .ci/run does this)"),
]


@contextlib.contextmanager
def serving(ckpt: Path, tmp_path: Path, secrets: str, port: int | None = None):
    """The page as `make app` starts it (the launcher, default host) with `secrets` as its secrets.toml."""
    cwd, port, log = project_dir(tmp_path / "site", secrets), port or free_port(), tmp_path / "page.log"
    proc = launch(cwd, log, "--port", str(port), "--ckpt", str(ckpt))
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc, log)
        yield url, log
    finally:
        stop(proc)


def signed_in_page(browser, url: str, timeout_ms: int = 30_000, **page_options):
    """A new page on `url`, signed in with the test password."""
    page = browser.new_page(viewport={"width": 1280, "height": 900}, **page_options)
    page.set_default_timeout(timeout_ms)
    page.goto(url, timeout=30_000)
    page.locator("input[type=password]").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    return page


@pytest.fixture
def server(trained_ckpt, tmp_path):
    """The page with a password configured."""
    playwright = pytest.importorskip("playwright.sync_api")
    with serving(trained_ckpt, tmp_path, f'[lungcnn]\npassword_hash = "{hash_password(PASSWORD)}"\n') as (url, log):
        yield playwright, url, log


def test_sign_in_and_upload_in_a_real_browser(server, tiny_root, tmp_path):
    playwright, url, log = server
    sample = sorted((tiny_root / "malignant").glob("*.png"))[0]
    scan, broken, ct = tmp_path / "scan.png", tmp_path / "broken.jpg", tmp_path / "slice.dcm"
    shutil.copy(sample, scan)
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    ct.write_bytes(dicom(with_pixels=True, patient=True))
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=30_000)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
            page.set_default_timeout(30_000)
            page.goto(url, timeout=30_000)
            page.get_by_text("Decision support, not a diagnosis").first.wait_for()
            password = page.locator("input[type=password]")
            password.wait_for()
            assert page.locator("input[type=file]").count() == 0 and page.get_by_text("About this model").count() == 0

            password.fill("certainly not the password")
            page.get_by_role("button", name="Sign in").click()
            page.get_by_text("Wrong password.").wait_for()
            assert page.locator("input[type=file]").count() == 0
            assert page.locator("input[type=password]").input_value() == ""  # the form forgot what was typed

            page.locator("input[type=password]").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            page.locator("input[type=file]").first.set_input_files([str(scan), str(broken), str(ct)])
            metric = page.locator('[data-testid="stMetricValue"]').first
            metric.wait_for()
            assert re.fullmatch(r"(\d{1,2}\.\d%|< 0\.1%|> 99\.9%)", metric.inner_text().strip())
            page.get_by_text(re.compile(r"^(BENIGN|MALIGNANT)$")).first.wait_for()
            alert = page.locator('[data-testid="stAlert"]').filter(has_text="broken.jpg:")
            alert.first.wait_for()
            assert "JPEG" in alert.first.inner_text() or "corrupt" in alert.first.inner_text()
            page.get_by_text("slice.dcm").first.wait_for()
            assert page.locator('[data-testid="stMetricValue"]').count() == 2  # the PNG and the DICOM
            with page.expect_download() as download:
                page.get_by_text("Download results (CSV)").click()
            csv = Path(download.value.path()).read_text()
            assert "scan.png" in csv and "slice.dcm" in csv and "broken.jpg" in csv
            shown = page.content() + page.locator("body").inner_text()
            # Streamlit scrolls inside its main container, so full_page alone shows one screen: grow the viewport.
            height = page.evaluate("document.querySelector('[data-testid=\"stMain\"]')?.scrollHeight ?? 900")
            page.set_viewport_size({"width": 1280, "height": max(900, min(int(height) + 40, 4000))})
            page.wait_for_timeout(500)  # let images finish painting before the screenshot
            shot = tmp_path / "app.png"
            page.screenshot(path=str(shot), full_page=True, timeout=30_000)
        finally:
            browser.close()
    assert patient_values_in(shown) == [] and patient_values_in(csv) == []
    server_log = log.read_text()
    assert "sign-in failed: wrong password" in server_log and "sign-in succeeded: password" in server_log
    assert "analysed 3 uploaded files" in server_log
    assert patient_values_in(server_log) == [] and PASSWORD not in server_log
    assert shot.stat().st_size > 10_000
    shutil.copy(shot, SCREENSHOT_COPY)


def test_single_sign_on_round_trip_in_a_real_browser(trained_ckpt, tmp_path):
    """Streamlit's OIDC sign-in against a stand-in provider on loopback: button, provider, callback, page, sign-out."""
    playwright = pytest.importorskip("playwright.sync_api")
    port = free_port()
    with OIDCProvider("lungcnn-test", "test-client-secret") as idp:
        secrets = (f'[auth]\nredirect_uri = "http://127.0.0.1:{port}/oauth2callback"\ncookie_secret = "{"c" * 40}"\n'
                   f'client_id = "lungcnn-test"\nclient_secret = "test-client-secret"\n'
                   f'server_metadata_url = "{idp.metadata_url}"\n')
        with serving(trained_ckpt, tmp_path, secrets, port) as (url, log), playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=30_000)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.set_default_timeout(30_000)
                page.goto(url, timeout=30_000)
                sign_in = page.get_by_role("button", name="Sign in with your hospital account")
                sign_in.wait_for()
                assert page.locator("input[type=file]").count() == 0 and page.locator("input[type=password]").count() == 0
                sign_in.click()  # -> the provider -> /oauth2callback -> the page, signed in
                page.locator("input[type=file]").first.wait_for(state="attached")
                page.get_by_text(f"Signed in as {SSO_USER['email']}").wait_for()
                page.get_by_role("button", name="Sign out").click()
                page.get_by_role("button", name="Sign in with your hospital account").wait_for()
                assert page.locator("input[type=file]").count() == 0
            finally:
                browser.close()
            server_log = log.read_text()
    assert idp.tokens_issued == 1
    assert f"sign-in succeeded: single sign-on as {SSO_USER['email']}" in server_log and "signed out" in server_log


def test_an_image_out_of_domain_gets_no_result_in_a_real_browser(calibrated_ckpt, tmp_path):
    """The domain guard's path in a real browser: a brain MR shows the plain sentence, no percentage."""
    playwright = pytest.importorskip("playwright.sync_api")
    from pydicom.data import get_testdata_file

    from lungcnn.webapp.uploads import NOT_IN_DOMAIN

    mr = tmp_path / "brain.dcm"
    shutil.copy(get_testdata_file("MR_small.dcm"), mr)
    with serving(calibrated_ckpt, tmp_path, f'[lungcnn]\npassword_hash = "{hash_password(PASSWORD)}"\n') as (url, _log):
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=30_000)
            try:
                page = signed_in_page(browser, url)
                page.locator("input[type=file]").first.set_input_files([str(mr)])
                page.get_by_text(NOT_IN_DOMAIN).first.wait_for()
                assert page.locator('[data-testid="stMetricValue"]').count() == 0  # no percentage for it
                assert page.get_by_text(re.compile(r"^(BENIGN|MALIGNANT)$")).count() == 0
            finally:
                browser.close()


def test_a_whole_series_in_a_real_browser(server, tmp_path):
    """Series mode: 6 DICOM slices with patient tags, uploaded in no order -> the series result first, ranked
    slices, a slider in body order, the series CSV; no patient tag on the page or in the CSV."""
    from lungcnn.data.synthetic.dicom import ct_series

    playwright, url, log = server
    files = []
    for k, data in zip([3, 0, 5, 2, 4, 1], (ct_series(6, 64, seed=31)[i] for i in [3, 0, 5, 2, 4, 1])):
        files.append(tmp_path / f"IM{k:04d}")
        files[-1].write_bytes(data)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=30_000)
        try:
            page = signed_in_page(browser, url, timeout_ms=60_000, accept_downloads=True)
            page.get_by_text("One patient's series").click()
            page.get_by_text("Upload all slices of one series").first.wait_for()
            page.locator("input[type=file]").first.set_input_files([str(f) for f in files])
            page.get_by_text("Series probability of malignant").first.wait_for()
            page.get_by_text(re.compile(r"^Series result:")).first.wait_for()
            page.get_by_text(re.compile(r"Most suspicious slice:")).first.wait_for()  # case-sensitive: not the card
            page.get_by_text("Scroll through the series").first.wait_for()
            page.get_by_role("slider").first.wait_for()  # rendered after the ranked slices' heat maps
            with page.expect_download() as download:
                page.get_by_text("Download series results (CSV)").click()
            csv = Path(download.value.path()).read_text()
            shown = page.content() + page.locator("body").inner_text()
        finally:
            browser.close()
    assert csv.splitlines()[0].startswith("series,n_slices,series_probability_malignant,decision")
    assert "n_out_of_domain" in csv.splitlines()[0] and csv.splitlines()[1].split(",")[1] == "6"
    assert patient_values_in(shown) == [] and patient_values_in(csv) == [] and patient_values_in(log.read_text()) == []
