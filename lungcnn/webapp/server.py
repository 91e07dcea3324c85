"""Serving the clinicians' page (`lungcnn app`, `make app`): on this computer only unless sign-in is configured.

Checks the address first, then replaces itself with `streamlit run app/streamlit_app.py`; a page asked to listen
on the network with no sign-in configured does not start.
"""

from __future__ import annotations

import os
import sys
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lungcnn.errors import LungCNNInputError
from lungcnn.webapp.auth import AuthSettings, is_loopback

APP = Path(__file__).resolve().parents[2] / "app" / "streamlit_app.py"
HOW_TO_SIGN_IN = ("run `lungcnn-app-password` and add its lines to .streamlit/secrets.toml, "
                  "or configure [auth] for single sign-on (README: Deploying on a hospital network)")


def read_secrets(paths: Sequence[str | Path]) -> dict[str, Any]:
    """The secrets Streamlit will see: each existing TOML file in order, later files overriding earlier ones."""
    merged: dict[str, Any] = {}
    for path in map(Path, paths):
        if path.is_dir():
            raise LungCNNInputError(f"{path}: lungcnn-app reads secrets from TOML files, not directories")
        if not path.is_file():
            continue
        try:
            merged.update(tomllib.loads(path.read_text(encoding="utf-8")))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise LungCNNInputError(f"{path}: not valid TOML ({e})") from None
    return merged


def check_bind(host: str, secrets: Mapping[str, Any]) -> AuthSettings:
    """The sign-in settings, if `host` may be served with them; LungCNNInputError (one line) if not."""
    settings = AuthSettings.from_secrets(secrets)
    if not is_loopback(host) and not settings.configured:
        shown = host or "every interface"
        raise LungCNNInputError(f"refusing to listen on {shown} without sign-in: {HOW_TO_SIGN_IN}")
    return settings


def streamlit_command(host: str, port: int, ckpt: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.address", host, "--server.port", str(port)]
    return cmd + (["--", "--ckpt", ckpt] if ckpt else [])


def serve(host: str, port: int, ckpt: str | None) -> None:
    """Check the address against the sign-in settings, then replace this process with Streamlit's server."""
    from streamlit import config

    check_bind(host, read_secrets(config.get_option("secrets.files")))
    if not is_loopback(host) and not config.get_option("server.sslCertFile"):
        print("lungcnn-app: warning: no TLS (server.sslCertFile): passwords and images cross the network in clear "
              "unless a TLS proxy is in front", file=sys.stderr)
    cmd = streamlit_command(host, port, ckpt)
    os.execv(cmd[0], cmd)
