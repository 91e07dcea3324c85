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
           "LUNGCNN_CKPT": "", "STREAMLIT_SERVER_HEADLESS": "true", "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
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
