"""read_image: every supported format becomes (H, W) float32 in [0, 1]; every bad file one clear error."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from lungcnn.data.io import LungWindow, read_image
from lungcnn.errors import LungCNNInputError


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def _check(image: np.ndarray, shape: tuple[int, int]) -> None:
    assert image.dtype == np.float32 and image.shape == shape
    assert 0.0 <= image.min() and image.max() <= 1.0


def test_8bit_gray_png_divides_by_255():
    array = np.array([[0, 51], [255, 102]], np.uint8)
    image = read_image(_png(array))
    _check(image, (2, 2))
    np.testing.assert_allclose(image, array / 255.0, atol=1e-6)


def test_16bit_gray_png_is_stretched_to_its_range():
    array = np.array([[1000, 2000], [3000, 1500]], np.uint16)
    image = read_image(_png(array))
    _check(image, (2, 2))
    np.testing.assert_allclose(image, (array - 1000) / 2000.0, atol=1e-6)


def test_rgb_jpeg_rgba_and_palette_png():
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG")
    _check(read_image(buf.getvalue(), name="x.jpg"), (8, 8))

    rgba = np.full((6, 5, 4), 255, np.uint8)
    rgba[0, 0, 3] = 0  # a transparent pixel composites to black (air)
    image = read_image(_png(rgba))
    _check(image, (6, 5))
    assert image[0, 0] == 0.0 and image[1, 1] == 1.0

    palette = Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4)).convert("P")
    buf = io.BytesIO()
    palette.save(buf, format="PNG")
    _check(read_image(buf.getvalue()), (4, 4))


def test_real_ct_dicom_is_lung_windowed(tmp_path):
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    image = read_image(path)
    _check(image, hu.shape)
    expected = np.clip((hu - (-600 - 750)) / 1500, 0, 1)
    np.testing.assert_allclose(image, expected, atol=1e-5)
    narrow = read_image(path, window=LungWindow(level=40, width=400))
    assert not np.allclose(narrow, image)


@pytest.mark.parametrize("name, shape", [("examples_jpeg2k.dcm", (480, 640)), ("examples_rgb_color.dcm", (240, 320)),
                                         ("examples_ybr_color.dcm", (240, 320))])
def test_colour_dicom_is_read_as_one_gray_frame_with_its_axes_from_the_tags(name, shape):
    """Colour (RGB, YBR_FULL_422 multi-frame, YBR_RCT JPEG 2000): rows x columns, luma as for colour rasters."""
    path = get_testdata_file(name)
    image = read_image(path)
    _check(image, shape)
    rgb = pydicom.dcmread(path).pixel_array.astype(np.float64)
    rgb = rgb[len(rgb) // 2] if rgb.ndim == 4 else rgb
    luma = rgb @ [0.299, 0.587, 0.114]
    np.testing.assert_allclose(image, (luma - luma.min()) / (luma.max() - luma.min()), atol=1e-5)


def test_dicom_whose_pixels_do_not_fit_its_tags_is_refused(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("examples_rgb_color.dcm"))
    ds.SamplesPerPixel = 1  # the data still holds three samples per pixel
    path = tmp_path / "odd.dcm"
    ds.save_as(path)
    with pytest.raises(LungCNNInputError, match="samples|pixel"):
        read_image(path)


def test_dicom_without_pixels_is_refused(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.PixelData
    path = tmp_path / "nopixels.dcm"
    ds.save_as(path)
    with pytest.raises(LungCNNInputError, match="no pixel data"):
        read_image(path)


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", "empty"),
        (b"this is a text file, renamed", "not an image"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 64, "corrupt|not an image"),
    ],
)
def test_bad_bytes_get_one_clear_error(data, match):
    with pytest.raises(LungCNNInputError, match=match):
        read_image(data, name="upload.png")


def test_truncated_jpeg_is_refused():
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)).save(buf, format="JPEG")
    with pytest.raises(LungCNNInputError, match="corrupt or truncated"):
        read_image(buf.getvalue()[: len(buf.getvalue()) // 2], name="half.jpg")


def test_decompression_bomb_is_refused_before_decoding():
    # A valid PNG header declaring 100000 x 100000 pixels, with almost no data behind it.
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + chunk(b"IEND", b"")
    with pytest.raises(LungCNNInputError, match="too large|pixel limit"):
        read_image(png, name="bomb.png")
    small = struct.pack(">IIBBBBB", 8000, 8000, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", small) + chunk(b"IEND", b"")
    with pytest.raises(LungCNNInputError, match="pixel limit"):
        read_image(png, name="big.png", max_pixels=1_000_000)


def test_missing_file_and_size_limit(tmp_path):
    with pytest.raises(LungCNNInputError, match="cannot read"):
        read_image(tmp_path / "nope.png")
    path = tmp_path / "big.png"
    path.write_bytes(_png(np.zeros((64, 64), np.uint8)))
    with pytest.raises(LungCNNInputError, match="limit"):
        read_image(path, max_bytes=10)
