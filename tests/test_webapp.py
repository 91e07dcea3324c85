"""The page's safety logic (lungcnn.webapp): password hashes, back-off, sign-in settings, who may see the page
without signing in, the launcher's refusal, the bind address, and `lungcnn-app-password`."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tomllib
import urllib.request

import pytest

from lungcnn.errors import LungCNNInputError
from lungcnn.webapp.auth import (
    Access,
    AuthSettings,
    Backoff,
    access,
    hash_password,
    is_loopback,
    parse_hash,
    session_backoff,
    try_password,
    verify_password,
)
from lungcnn.webapp.server import check_bind, read_secrets, streamlit_command
from tests.pagekit import PASSWORD, ROOT, free_port, launch, listening_addresses, project_dir, stop, wait_healthy

OIDC = {"redirect_uri": "https://lungcnn.example.org/oauth2callback", "cookie_secret": "x" * 32,
        "client_id": "lungcnn", "client_secret": "s3cret",
        "server_metadata_url": "https://login.example.org/.well-known/openid-configuration"}


@pytest.fixture(scope="module")
def stored() -> str:
    return hash_password(PASSWORD)


# -- password hashes -------------------------------------------------------------------------------------------
def test_hash_is_salted_scrypt_that_verifies_only_the_right_password(stored):
    assert stored.startswith("scrypt:32768:8:1$") and PASSWORD not in stored
    n, r, p, salt, key = parse_hash(stored)
    assert (n, r, p, len(salt), len(key)) == (2**15, 8, 1, 16, 32)
    assert verify_password(PASSWORD, stored)
    assert not verify_password(PASSWORD + " ", stored) and not verify_password(PASSWORD[:-1], stored)
    assert hash_password(PASSWORD) != stored  # a fresh salt each time


@pytest.mark.parametrize("bad", ["", "plaintext password", "sha256$abc$def", "scrypt:1024:8:1$AAAA$BBBB",
                                 "scrypt:32768:8:1$not base64!$x", "scrypt:32768:8:1$QUFB$QUFB"])
def test_malformed_or_weak_hashes_are_refused(bad):
    with pytest.raises(LungCNNInputError):
        parse_hash(bad)


def test_short_passwords_are_refused():
    with pytest.raises(LungCNNInputError, match="at least 12"):
        hash_password("short")


# -- back-off --------------------------------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_backoff_doubles_after_the_free_attempts_up_to_the_cap_and_forgets_old_failures():
    clock = Clock()
    b = Backoff(free=2, base=1.0, cap=5.0, window=100.0, clock=clock)
    waits = []
    for _ in range(6):
        waits.append(b.wait())
        b.failed()
    assert waits == [0, 0, 0, 1, 2, 4] and b.wait() == 5.0  # capped
    clock.now += 3
    assert b.wait() == 2.0  # counted from the last failure
    clock.now += 101  # all failures left the window
    assert b.wait() == 0 and b.failures == 0
    b.failed(), b.failed(), b.failed()
    b.reset()
    assert b.wait() == 0


def test_wrong_passwords_slow_down_per_session_and_for_everyone(stored, caplog):
    settings = AuthSettings(password_hash=stored)
    shared = Backoff(free=3, window=60)
    session = session_backoff()
    with caplog.at_level(logging.INFO, logger="lungcnn.webapp.auth"):
        assert try_password(settings, "wrong one", session, who="s1", shared=shared).message == "Wrong password."
        second = try_password(settings, "wrong two", session, who="s1", shared=shared)
        assert not second.ok and second.message == "Wrong password."
        third = try_password(settings, PASSWORD, session, who="s1", shared=shared)  # even the right one waits
        assert not third.ok and "wait 1 seconds" in third.message
        # New sessions do not dodge it: the process-wide back-off catches a stream of fresh sessions.
        assert not try_password(settings, "wrong three", session_backoff(), who="s2", shared=shared).ok
        assert not try_password(settings, "wrong four", session_backoff(), who="s3", shared=shared).ok
        blocked = try_password(settings, PASSWORD, session_backoff(), who="s4", shared=shared)
        assert not blocked.ok and "wait" in blocked.message
        shared.reset()
        fresh = session_backoff()
        assert try_password(settings, PASSWORD, fresh, who="s5", shared=shared).ok and fresh.failures == 0
    assert "sign-in failed: wrong password, 2 in a row (s1)" in caplog.text and "sign-in succeeded: password (s5)" in caplog.text
    assert "refused: too soon" in caplog.text
    assert "wrong one" not in caplog.text and PASSWORD not in caplog.text  # never a typed password


# -- settings and access ------------------------------------------------------------------------------------------
def test_settings_from_secrets(stored):
    assert not AuthSettings.from_secrets({}).configured
    assert AuthSettings.from_secrets({"lungcnn": {"password_hash": stored}}).password_hash == stored
    assert AuthSettings.from_secrets({"auth": OIDC}).providers == ("default",)
    shared = {k: OIDC[k] for k in ("redirect_uri", "cookie_secret")}
    named = {**shared, "entra": {k: OIDC[k] for k in ("client_id", "client_secret", "server_metadata_url")}}
    assert AuthSettings.from_secrets({"auth": named}).providers == ("entra",)
    with pytest.raises(LungCNNInputError, match="lacks cookie_secret"):
        AuthSettings.from_secrets({"auth": {k: v for k, v in OIDC.items() if k != "cookie_secret"}})
    with pytest.raises(LungCNNInputError, match=r"\[auth.entra\] .* lacks client_secret"):
        AuthSettings.from_secrets({"auth": {**shared, "entra": {"client_id": "x", "server_metadata_url": "y"}}})
    with pytest.raises(LungCNNInputError, match="names no provider"):
        AuthSettings.from_secrets({"auth": shared})
    with pytest.raises(LungCNNInputError, match="password_hash"):
        AuthSettings.from_secrets({"lungcnn": {"password_hash": "hunter2"}})


def test_only_loopback_without_a_proxy_is_open_without_sign_in(stored):
    assert all(map(is_loopback, ["127.0.0.1", "127.0.1.1", "localhost", "::1", "[::1]"]))
    assert not any(map(is_loopback, ["", "0.0.0.0", "::", "10.1.2.3", "192.168.0.5", "myhost", "localhost.evil.org"]))
    none, password = AuthSettings(), AuthSettings(password_hash=stored)
    assert access(none, "127.0.0.1", {}) is Access.OPEN
    assert access(none, "127.0.0.1", {"x-forwarded-for": "10.0.0.7"}) is Access.REFUSED  # a proxy brings others in
    assert access(none, None, {}) is Access.REFUSED and access(none, "0.0.0.0", {}) is Access.REFUSED
    assert access(password, "127.0.0.1", {}) is Access.SIGN_IN  # configured sign-in applies everywhere
    assert access(password, "0.0.0.0", {}) is Access.SIGN_IN


# -- the launcher --------------------------------------------------------------------------------------------------
def test_launcher_refuses_the_network_without_sign_in(stored):
    for host in ("0.0.0.0", "", "::", "10.0.0.5", "clinic-ws-04"):
        with pytest.raises(LungCNNInputError, match="refusing to listen.*lungcnn-app-password"):
            check_bind(host, {})
    assert not check_bind("127.0.0.1", {}).configured
    assert check_bind("0.0.0.0", {"lungcnn": {"password_hash": stored}}).password_hash == stored
    assert check_bind("0.0.0.0", {"auth": OIDC}).providers == ("default",)
    cmd = streamlit_command("127.0.0.1", 8600, "m.ckpt")
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[-5:] == ["--server.port", "8600", "--", "--ckpt", "m.ckpt"]
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"


def test_read_secrets_merges_files_in_order_and_names_a_broken_one(tmp_path):
    a, b, missing = tmp_path / "a.toml", tmp_path / "b.toml", tmp_path / "none.toml"
    a.write_text('[lungcnn]\npassword_hash = "old"\n[other]\nx = 1\n')
    b.write_text('[lungcnn]\npassword_hash = "new"\n')
    assert read_secrets([a, missing, b]) == {"lungcnn": {"password_hash": "new"}, "other": {"x": 1}}
    b.write_text("[lungcnn\n")
    with pytest.raises(LungCNNInputError, match="b.toml: not valid TOML"):
        read_secrets([a, b])


def test_make_app_on_the_network_without_sign_in_exits_with_one_line(tmp_path):
    cwd, log, port = project_dir(tmp_path / "site"), tmp_path / "launch.log", free_port()
    proc = launch(cwd, log, "--host", "0.0.0.0", "--port", str(port))
    try:
        assert proc.wait(timeout=60) == 2
    finally:
        stop(proc)
    lines = log.read_text().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lungcnn: error: refusing to listen on 0.0.0.0 without sign-in")
    assert "secrets.toml" in lines[0] and not listening_addresses(port)


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads the kernel's socket table (Linux)")
def test_make_app_listens_on_loopback_only(tmp_path):
    cwd, log, port = project_dir(tmp_path / "site"), tmp_path / "page.log", free_port()
    proc = launch(cwd, log, "--port", str(port))  # the default host, as `make app`
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc, log)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=5) as response:
            assert response.status == 200
        assert listening_addresses(port) == {"127.0.0.1"}, listening_addresses(port)  # not 0.0.0.0, not ::
    finally:
        stop(proc)
    assert proc.returncode is not None


# -- lungcnn-app-password ------------------------------------------------------------------------------------------------
def run_password_command(stdin: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "lungcnn.webapp.password"], input=stdin, capture_output=True,
                          text=True, timeout=60, env=env, cwd=ROOT)


def test_password_command_prints_secrets_lines_with_a_hash_never_the_password():
    done = run_password_command(PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    assert PASSWORD not in done.stdout + done.stderr
    secrets = tomllib.loads(done.stdout)
    assert verify_password(PASSWORD, secrets["lungcnn"]["password_hash"])
    assert AuthSettings.from_secrets(secrets).configured
    assert "scrypt N=32768, r=8, p=1" in done.stdout


@pytest.mark.parametrize("stdin, message", [("", "no password"), ("short\n", "at least 12 characters")])
def test_password_command_refuses_bad_input_in_one_line(stdin, message):
    done = run_password_command(stdin)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [f"lungcnn: error: {done.stderr.split('error: ', 1)[1].strip()}"]
    assert message in done.stderr


def test_password_command_on_a_terminal_asks_twice_unseen(monkeypatch):
    import io

    from lungcnn.webapp import password

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    typed = iter([PASSWORD, PASSWORD, PASSWORD, PASSWORD + "x"])
    monkeypatch.setattr(password.getpass, "getpass", lambda prompt: next(typed))
    assert password.read_password(Terminal("ignored\n")) == PASSWORD
    with pytest.raises(LungCNNInputError, match="differ"):
        password.read_password(Terminal())
