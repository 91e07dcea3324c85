"""Test helpers for the clinicians' page: a DICOM with patient tags, and the page served on a loopback port."""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "a long test password 42"
# Patient tags no page, log or CSV may ever show: each value is unique enough to search for.
PATIENT = {"PatientName": "Quintero^Xaviera", "PatientID": "MRN-7713-0042", "PatientBirthDate": "19470311",
           "PatientAddress": "12 Zyzzyva Lane", "OtherPatientIDs": "ALT-99812"}


def dicom(with_pixels: bool, patient: bool = False, pixel_bytes: int | None = None) -> bytes:
    """A CT DICOM: 48x48 HU slice (a lung with a nodule) or no pixel data; `pixel_bytes` truncates PixelData."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta, ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta, CTImageStorage, meta.MediaStorageSOPInstanceUID, "CT"
    if patient:
        for key, value in PATIENT.items():
            setattr(ds, key, value)
    if with_pixels:
        hu = np.full((48, 48), -1000, np.int16)
        hu[8:40, 8:40] = -700  # lung
        hu[20:28, 20:28] = 40  # a nodule
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 48, 48, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = hu.tobytes()[:pixel_bytes]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def patient_values_in(text: str | bytes) -> list[str]:
    """The patient tag values (and the name's parts) found in `text`."""
    blob = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    needles = {*PATIENT.values(), *PATIENT["PatientName"].split("^")}
    return sorted(n for n in needles if n.lower() in blob.lower())


# -- the page served as `make app` serves it ---------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def project_dir(path: Path, secrets_toml: str | None = None) -> Path:
    """A folder the page runs from: the repo's .streamlit/config.toml, plus `secrets_toml` if given."""
    (path / ".streamlit").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / ".streamlit" / "config.toml", path / ".streamlit" / "config.toml")
    if secrets_toml is not None:
        (path / ".streamlit" / "secrets.toml").write_text(secrets_toml)
    return path


def launch(cwd: Path, log: Path, *args: str) -> subprocess.Popen:
    """`python -m lungcnn.webapp.launch ARGS` in `cwd`, in its own session, output to `log`; HOME is `cwd`
    so a developer's ~/.streamlit/secrets.toml stays out."""
    env = {**os.environ, "HOME": str(cwd), "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "LUNGCNN_CKPT": "", "NO_PROXY": "127.0.0.1,localhost",
           "STREAMLIT_SERVER_HEADLESS": "true", "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "lungcnn.webapp.launch", *args], cwd=cwd, stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)


def wait_healthy(url: str, server: subprocess.Popen, log: Path, timeout: float = 45.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the page exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    pytest.fail(f"the page did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop(server: subprocess.Popen) -> None:
    """Stop the server's whole process group (it was started in its own session)."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on `port`, from /proc/net/tcp{,6} (Linux)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if fields[3] == "0A" and int(port_hex, 16) == port:  # 0A = LISTEN
                raw = bytes.fromhex(address)
                # The kernel writes each 32-bit word in host (little-endian) order.
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.add(socket.inet_ntop(socket.AF_INET if width == 8 else socket.AF_INET6, raw))
    return found


# -- a stand-in OIDC provider on a loopback port ---------------------------------------------------------------
SSO_USER = {"sub": "staff-0042", "email": "dr.a@hospital.example", "name": "Dr A"}


class OIDCProvider:
    """The smallest OpenID Connect provider Streamlit's `st.login` completes a sign-in with: discovery, an
    authorize endpoint that signs `SSO_USER` in at once, a token endpoint returning an RS256 id_token, and its keys.
    Serves on 127.0.0.1 from a thread; `with OIDCProvider(client_id, secret) as idp: idp.metadata_url`."""

    def __init__(self, client_id: str, client_secret: str) -> None:
        from joserfc.jwk import RSAKey

        self.client_id, self.client_secret = client_id, client_secret
        self.key = RSAKey.generate_key(2048, parameters={"kid": "test-key", "use": "sig", "alg": "RS256"})
        self.codes: dict[str, str] = {}  # code -> nonce
        self.tokens_issued = 0

    def __enter__(self) -> OIDCProvider:
        import http.server
        import threading

        provider = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                provider.get(self)

            def do_POST(self) -> None:
                provider.post(self)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.metadata_url = f"{self.issuer}/.well-known/openid-configuration"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    @staticmethod
    def _send(handler, status: int, body: dict | None = None, headers: dict | None = None) -> None:
        import json

        data = json.dumps(body).encode() if body is not None else b""
        handler.send_response(status)
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def get(self, handler) -> None:
        import secrets
        from urllib.parse import parse_qs, urlencode, urlsplit

        url = urlsplit(handler.path)
        if url.path == "/.well-known/openid-configuration":
            self._send(handler, 200, {
                "issuer": self.issuer, "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token", "jwks_uri": f"{self.issuer}/jwks",
                "response_types_supported": ["code"], "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"]})
        elif url.path == "/jwks":
            self._send(handler, 200, {"keys": [self.key.as_dict(private=False)]})
        elif url.path == "/authorize":
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            if query.get("client_id") != self.client_id:
                return self._send(handler, 400, {"error": "unauthorized_client"})
            code = secrets.token_urlsafe(16)
            self.codes[code] = query.get("nonce", "")
            target = f"{query['redirect_uri']}?{urlencode({'code': code, 'state': query.get('state', '')})}"
            self._send(handler, 302, None, {"Location": target})
        else:
            self._send(handler, 404, {"error": "not_found"})

    def post(self, handler) -> None:
        import base64
        import time
        from urllib.parse import parse_qs

        from joserfc import jwt

        form = {k: v[0] for k, v in parse_qs(handler.rfile.read(int(handler.headers["Content-Length"])).decode()).items()}
        basic = handler.headers.get("Authorization", "")
        client = (base64.b64decode(basic[6:]).decode().split(":", 1) if basic.startswith("Basic ")
                  else [form.get("client_id"), form.get("client_secret")])
        code = form.get("code", "")
        if handler.path != "/token" or client != [self.client_id, self.client_secret] or code not in self.codes:
            return self._send(handler, 400, {"error": "invalid_grant"})
        now = int(time.time())
        claims = {**SSO_USER, "iss": self.issuer, "aud": self.client_id, "iat": now, "exp": now + 600,
                  "nonce": self.codes.pop(code)}
        id_token = jwt.encode({"alg": "RS256", "kid": "test-key"}, claims, self.key)
        self.tokens_issued += 1
        self._send(handler, 200, {"access_token": "opaque", "token_type": "Bearer", "expires_in": 600,
                                  "id_token": id_token})
