"""Fuzz `read_image`: whatever the bytes, the outcome is a float32 (H, W) image in [0, 1] or `LungCNNInputError`.

Never another exception type, a hang (pytest-timeout) or a large allocation (peak RSS is watched). Inputs:
random bytes, valid PNG / JPEG / DICOM cut at random points or with random bytes overwritten, PNG headers
declaring huge sizes, and DICOM files with missing or odd tags. Bounded so the file runs in well under a minute.
"""

from __future__ import annotations

import io
import os
import resource
import struct
import zlib

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.data import get_testdata_file

from lungcnn.data.io import LungWindow, read_image
from lungcnn.errors import LungCNNInputError

pytestmark = pytest.mark.filterwarnings("ignore")  # pydicom and PIL warn loudly about broken files
# LUNGCNN_FUZZ_EXAMPLES=5000 for a long local hunt; the default keeps this file well under a minute.
EXAMPLES = int(os.environ.get("LUNGCNN_FUZZ_EXAMPLES", "600"))
FUZZ = settings(max_examples=EXAMPLES, deadline=2000, database=None, suppress_health_check=[HealthCheck.too_slow])
NAMES = ("upload", "scan.png", "scan.jpg", "scan.dcm")


def _encode(array: np.ndarray, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


_RNG = np.random.default_rng(0)
PNG = _encode(_RNG.integers(0, 255, (24, 20), np.uint8), "PNG")
PNG16 = _encode(_RNG.integers(0, 65535, (12, 10), np.uint16), "PNG")
JPEG = _encode(_RNG.integers(0, 255, (24, 20, 3), np.uint8), "JPEG", quality=80)
TIFF = _encode(_RNG.integers(0, 255, (8, 8), np.uint8), "TIFF")  # 8x8 gray, uncompressed: fixed header layout
BMP = _encode(_RNG.integers(0, 255, (6, 5, 3), np.uint8), "BMP")
DICOM_PATH = get_testdata_file("CT_small.dcm")
with open(DICOM_PATH, "rb") as _f:
    DICOM = _f.read()
with open(get_testdata_file("examples_jpeg2k.dcm"), "rb") as _f:
    DICOM_J2K_COLOUR = _f.read()  # 480x640 YBR_RCT JPEG 2000: once read with its axes taken wrongly (640x3)
VALID = {"png": PNG, "png16": PNG16, "jpeg": JPEG, "tiff": TIFF, "bmp": BMP, "dicom": DICOM,
         "dicom_j2k_colour": DICOM_J2K_COLOUR}


def _check(data: bytes, name: str = "upload", window: LungWindow = LungWindow()) -> None:
    """The property: a valid image, or LungCNNInputError; any other exception fails the test."""
    try:
        image = read_image(data, name=name, window=window)
    except LungCNNInputError as e:
        assert str(e)
        return
    assert isinstance(image, np.ndarray) and image.dtype == np.float32 and image.ndim == 2
    assert image.shape[0] >= 1 and image.shape[1] >= 1
    assert np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0


@pytest.fixture(autouse=True)
def _no_large_allocation():
    """Inputs here are a few KB: peak memory must not grow by what a header-declared size would cost."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    yield
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 300, f"peak memory grew by {grown_mib:.0f} MiB"


@pytest.mark.timeout(60)
@FUZZ
@given(data=st.binary(max_size=2048), name=st.sampled_from(NAMES))
@example(data=b"\x00" * 128 + b"DICM", name="upload")
@example(data=b"\x89PNG\r\n\x1a\n", name="scan.png")
def test_random_bytes(data, name):
    _check(data, name)


@pytest.mark.timeout(60)
@FUZZ
@given(kind=st.sampled_from(sorted(VALID)), cut=st.floats(0, 1, exclude_max=True), name=st.sampled_from(NAMES))
def test_truncated_files(kind, cut, name):
    valid = VALID[kind]
    _check(valid[: int(cut * len(valid))], name)


@pytest.mark.timeout(60)
@FUZZ
@given(kind=st.sampled_from(sorted(VALID)),
       flips=st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 255)), min_size=1, max_size=12))
# Regressions: each escaped read_image as a foreign exception before the fix (lungcnn/data/io.py).
@example(kind="dicom", flips=[(136, 65)])  # file meta group length VR 'AL': NotImplementedError (unknown VR)
@example(kind="dicom", flips=[(136, 0)])  # file meta group length of 39066 bytes: pydicom BytesLengthException
@example(kind="dicom", flips=[(3269, 0x5F)])  # Rows with VR 'U_': NotImplementedError on tag access
@example(kind="dicom", flips=[(3370, 0x01)])  # RescaleIntercept '-1\x0124': ValueError converting it
@example(kind="tiff", flips=[(72, 11)])  # StripOffsets typed FLOAT: TypeError inside Pillow
@example(kind="tiff", flips=[(32, 0x40)])  # 8 x 4,194,312 strip: 387 MiB in read_image, ~70 TB once padded square
def test_random_byte_flips(kind, flips):
    buf = bytearray(VALID[kind])
    for position, value in flips:
        buf[position % len(buf)] = value
    _check(bytes(buf), "scan.dcm" if kind.startswith("dicom") else "upload")


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@pytest.mark.timeout(60)
@FUZZ
@given(width=st.integers(0, 2**31 - 1), height=st.integers(0, 2**31 - 1),
       depth_color=st.sampled_from([(8, 0), (16, 0), (8, 2), (8, 6), (1, 0), (8, 3), (16, 6), (3, 0)]),
       idat=st.binary(max_size=64))
@example(width=100_000, height=100_000, depth_color=(8, 0), idat=b"")
@example(width=6000, height=6000, depth_color=(16, 6), idat=b"")  # 36 Mpx (under the limit), no pixel data
def test_png_headers_declaring_huge_sizes(width, height, depth_color, idat):
    header = struct.pack(">IIBBBBB", width, height, *depth_color, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(idat)) + _chunk(b"IEND", b"")
    _check(png, "scan.png")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("width, height", [(1, 40_000_000), (8, 4_194_312), (40_000, 1_000)])
def test_valid_strip_images_are_refused_before_decoding(width, height):
    """Regression: a valid 78 KB PNG of 1 x 40,000,000 pixels was decoded (917 MiB) and handed on, and
    `to_model_grid` pads to a square: 40,000,000^2 pixels. The limit now applies to the padded square."""
    rows = zlib.compress(b"\x00" * (width + 1) * height, 1)
    png = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
           + _chunk(b"IDAT", rows) + _chunk(b"IEND", b""))
    with pytest.raises(LungCNNInputError, match="pixel limit"):
        read_image(png, name="strip.png")


# -- DICOM with missing or odd tags ------------------------------------------------------------------

def _delete(keyword: str):
    def edit(ds: pydicom.Dataset) -> None:
        if keyword in ds:
            delattr(ds, keyword)
    return edit


def _set(keyword: str, value):
    def edit(ds: pydicom.Dataset) -> None:
        setattr(ds, keyword, value)
    return edit


def _pixel_bytes(transform):
    def edit(ds: pydicom.Dataset) -> None:
        ds.PixelData = transform(bytes(ds.PixelData))
    return edit


DICOM_EDITS = st.one_of(
    st.sampled_from(["Rows", "Columns", "PixelData", "RescaleSlope", "RescaleIntercept", "BitsAllocated",
                     "BitsStored", "PixelRepresentation", "SamplesPerPixel", "PhotometricInterpretation",
                     "Modality", "HighBit"]).map(_delete),
    st.sampled_from([0, 1, 2, 7, 9, 12, 13, 24, 31, 33, 48, 64, 128, 255]).map(lambda v: _set("BitsAllocated", v)),
    st.sampled_from([0, 1, 5, 13, 17, 64]).map(lambda v: _set("BitsStored", v)),
    st.sampled_from([0, 1, 2, 3, 4, 65535]).map(lambda v: _set("SamplesPerPixel", v)),
    st.sampled_from([0, 1, 3, 127, 129, 65535]).map(lambda v: _set("Rows", v)),
    st.sampled_from([0, 1, 3, 127, 129, 65535]).map(lambda v: _set("Columns", v)),
    st.sampled_from(["0", "-1", "2", "1000000", "abc", ""]).map(lambda v: _set("NumberOfFrames", v)),
    st.sampled_from(["0", "-1", "1e308", "nan", "inf", "-inf", "abc", ""]).map(lambda v: _set("RescaleSlope", v)),
    st.sampled_from(["-1e308", "nan", "inf", "abc", "1024"]).map(lambda v: _set("RescaleIntercept", v)),
    st.sampled_from(["-1500", "0", "nan", "abc"]).map(lambda v: _set("WindowWidth", v)),
    st.sampled_from(["MONOCHROME1", "RGB", "PALETTE COLOR", "YBR_FULL", "", "XYZ"]).map(
        lambda v: _set("PhotometricInterpretation", v)),
    st.sampled_from(["MR", "", "OT"]).map(lambda v: _set("Modality", v)),
    st.sampled_from([0, 1, 2, 7]).map(lambda v: _set("PixelRepresentation", v)),
    st.sampled_from([lambda b: b[: len(b) // 2], lambda b: b[:1], lambda b: b"", lambda b: b + b"\x00" * 77,
                     lambda b: b * 3]).map(_pixel_bytes),
)


def _dicom_bytes(edits) -> bytes:
    ds = pydicom.dcmread(DICOM_PATH)
    for edit in edits:
        edit(ds)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False)
    return buf.getvalue()


@pytest.mark.timeout(60)
@FUZZ
@given(edits=st.lists(DICOM_EDITS, min_size=1, max_size=4))
@example(edits=[_set("Rows", 0)])
@example(edits=[_delete("PixelData")])
@example(edits=[_set("BitsAllocated", 13)])
@example(edits=[_pixel_bytes(lambda b: b[: len(b) // 2])])
@example(edits=[_set("RescaleSlope", "abc")])
@example(edits=[_set("NumberOfFrames", "abc")])
def test_dicom_with_missing_or_odd_tags(edits):
    try:
        data = _dicom_bytes(edits)
    except Exception:  # pydicom refused to write this combination: nothing to read
        return
    _check(data, "scan.dcm")
    _check(data, "upload")  # recognised by its DICM preamble, not the name


@pytest.mark.timeout(30)
@settings(max_examples=50, deadline=2000, database=None)
@given(level=st.floats(allow_nan=True, allow_infinity=True), width=st.floats(allow_nan=True, allow_infinity=True))
@example(level=-600.0, width=-1500.0)
@example(level=-600.0, width=0.0)
def test_any_lung_window(level, width):
    try:
        window = LungWindow(level=level, width=width)
    except LungCNNInputError:
        return
    _check(DICOM, "scan.dcm", window)
