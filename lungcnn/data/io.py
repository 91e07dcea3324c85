"""Read any supported file into one grayscale float image.

`read_image` is the single entry for pixels in lungcnn: training, prediction and the app all call it,
so every format is handled (and every failure is reported) the same way.

Output: ``np.float32`` array of shape (H, W), values in [0, 1].
- 8-bit images (gray, RGB, RGBA, palette, ...) are converted to gray (alpha dropped) and divided by 255.
- 16/32-bit integer and float images carry no standard window, so they are stretched to their own
  min..max range.
- DICOM: stored values -> Hounsfield units with RescaleSlope/RescaleIntercept, then the lung window
  (level -600 HU, width 1500 HU by default) maps [level - width/2, level + width/2] to [0, 1].

Every failure raises `LungCNNInputError` naming the file; limits on bytes and pixels are checked
before any pixel buffer is allocated, so a decompression bomb costs nothing. The pixel limit applies
to the square the image is padded to downstream (`to_model_grid`): an 8 x 4,000,000 strip is as
costly there as a 4,000,000-pixel-wide square.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from lungcnn.data.dicom_codecs import pixel_array
from lungcnn.errors import LungCNNInputError, require_number

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
DICOM_SUFFIXES = {".dcm", ".dicom"}
SUPPORTED_SUFFIXES = IMAGE_SUFFIXES | DICOM_SUFFIXES

MAX_BYTES = 64 * 1024 * 1024
MAX_PIXELS = 40_000_000


def _check_pixels(name: str, width: int, height: int, max_pixels: int, extra: int = 1) -> None:
    """Refuse a declared size whose padded square (times `extra`: frames, samples) exceeds `max_pixels`."""
    side = max(width, height)
    if width * height * extra > max_pixels or side * side > max_pixels:
        raise LungCNNInputError(f"{name}: {width}x{height}" + (f"x{extra}" if extra > 1 else "")
                                + f" pixels (padded to {side}x{side}) is over the {max_pixels:,} pixel limit")


@dataclass(frozen=True)
class LungWindow:
    """A CT display window in Hounsfield units; the default is the usual lung window."""

    level: float = -600.0
    width: float = 1500.0

    def __post_init__(self) -> None:
        require_number("data.window.level", self.level, -1e5, None, low_open=False)
        require_number("data.window.width", self.width, 0, None, low_open=True)

    def apply(self, hu: np.ndarray) -> np.ndarray:
        low = self.level - self.width / 2
        return np.clip((hu - low) / self.width, 0.0, 1.0).astype(np.float32)


def is_supported(path: str | Path) -> bool:
    return Path(path).suffix.lower() in SUPPORTED_SUFFIXES


def read_image(
    source: str | Path | bytes,
    *,
    name: str | None = None,
    window: LungWindow = LungWindow(),
    max_bytes: int = MAX_BYTES,
    max_pixels: int = MAX_PIXELS,
) -> np.ndarray:
    """Decode a file path or raw bytes (an upload) into a (H, W) float32 image in [0, 1]."""
    if isinstance(source, (bytes, bytearray)):
        data, name = bytes(source), name or "upload"
    else:
        path = Path(source)
        name = name or str(path)
        try:
            size = path.stat().st_size
        except OSError as e:
            raise LungCNNInputError(f"{name}: cannot read file ({e.strerror or e})") from None
        if size > max_bytes:
            raise LungCNNInputError(f"{name}: file is {size / 2**20:.1f} MiB, over the {max_bytes / 2**20:.0f} MiB limit")
        data = path.read_bytes()
    if not data:
        raise LungCNNInputError(f"{name}: the file is empty")
    if len(data) > max_bytes:
        raise LungCNNInputError(f"{name}: file is {len(data) / 2**20:.1f} MiB, over the {max_bytes / 2**20:.0f} MiB limit")
    if looks_like_dicom(data, name):
        image = _read_dicom(data, name, window, max_pixels)
    else:
        image = _read_raster(data, name, max_pixels)
    if not np.isfinite(image).all():
        raise LungCNNInputError(f"{name}: the image contains NaN or infinite values")
    return image


def looks_like_dicom(data: bytes, name: str) -> bool:
    """DICOM by its 'DICM' marker (the first 132 bytes suffice) or by its file name's suffix."""
    return data[128:132] == b"DICM" or Path(name).suffix.lower() in DICOM_SUFFIXES


def _read_raster(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            width, height = im.size
            if width < 1 or height < 1:
                raise LungCNNInputError(f"{name}: the image has no pixels ({width}x{height})")
            _check_pixels(name, width, height, max_pixels)
            im.load()
            return _to_gray_unit(im, name)
    except LungCNNInputError:
        raise
    except UnidentifiedImageError:
        raise LungCNNInputError(f"{name}: not an image lungcnn can read (JPEG, PNG, BMP, TIFF or DICOM)") from None
    except Image.DecompressionBombError:
        raise LungCNNInputError(f"{name}: declared size is too large to decode safely") from None
    except Exception as e:  # Pillow's decoders raise OSError, SyntaxError, struct.error, IndexError... on bad bytes
        raise LungCNNInputError(f"{name}: the image is corrupt or truncated ({type(e).__name__}: {e})") from None


def _to_gray_unit(im: Image.Image, name: str) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _stretch(np.asarray(im, dtype=np.float64))
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Composite on black: transparent areas become background (air), as in a CT.
        im = Image.alpha_composite(Image.new("RGBA", im.size, (0, 0, 0, 255)), im.convert("RGBA"))
    try:
        gray = im.convert("L")
    except (ValueError, OSError) as e:
        raise LungCNNInputError(f"{name}: unsupported image mode {im.mode!r} ({e})") from None
    return np.asarray(gray, dtype=np.float32) / 255.0


def _stretch(values: np.ndarray) -> np.ndarray:
    if not np.isfinite(values).all():
        raise LungCNNInputError("the image contains NaN or infinite values")
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, np.float32)
    return ((values - low) / (high - low)).astype(np.float32)


def _read_dicom(data: bytes, name: str, window: LungWindow, max_pixels: int) -> np.ndarray:
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        tags = _dicom_tags(ds, name)
    except LungCNNInputError:
        raise
    except Exception as e:  # pydicom parses lazily and raises many types on a corrupt file (struct.error,
        # NotImplementedError for an unknown VR, BytesLengthException, ValueError...), at read or at tag access.
        raise LungCNNInputError(f"{name}: not a readable DICOM file ({type(e).__name__}: {e})") from None
    rows, cols, frames, samples = tags["rows"], tags["cols"], tags["frames"], tags["samples"]
    if rows < 1 or cols < 1:
        raise LungCNNInputError(f"{name}: the DICOM image has no pixels ({cols}x{rows})")
    _check_pixels(name, cols, rows, max_pixels, extra=max(frames, 1) * max(samples, 1))
    try:
        pixels = np.asarray(pixel_array(ds), dtype=np.float64)
    except Exception as e:  # pydicom raises many types: missing decoder, size mismatch, bad tags
        raise LungCNNInputError(f"{name}: cannot decode the DICOM pixel data ({type(e).__name__}: {e})") from None
    photometric = tags["photometric"]
    pixels = _one_gray_frame(pixels, rows, cols, frames, samples, name)
    if not np.isfinite(pixels).all():
        raise LungCNNInputError(f"{name}: the DICOM pixel data contains NaN or infinite values")
    if tags["modality"] != "CT" and tags["intercept"] is None:
        # No Hounsfield scale to window: fall back to the image's own range.
        image = _stretch(pixels)
        return 1.0 - image if photometric == "MONOCHROME1" else image
    image = window.apply(pixels * tags["slope"] + (tags["intercept"] or 0.0))
    return 1.0 - image if photometric == "MONOCHROME1" else image


# ITU-R BT.601 luma, as Pillow's convert("L") weighs a colour JPEG or PNG.
LUMA = np.array([0.299, 0.587, 0.114])


def _one_gray_frame(pixels: np.ndarray, rows: int, cols: int, frames: int, samples: int, name: str) -> np.ndarray:
    """pydicom's pixel array -> one (rows, cols) gray frame, its axes read from the tags, never guessed from the
    shape: (frames,) rows, cols (, samples). Colour comes as RGB (pydicom converts YBR_FULL/_422 and the JPEG 2000
    decoders undo YBR_RCT/_ICT), weighed to gray as colour rasters are; several frames: the middle one."""
    expected = ((frames,) if frames > 1 else ()) + (rows, cols) + ((samples,) if samples > 1 else ())
    if pixels.shape != expected:
        raise LungCNNInputError(f"{name}: the DICOM pixel data has shape {pixels.shape}, its tags say {expected} "
                                "(frames, rows, columns, samples); refusing to guess")
    if frames > 1:
        pixels = pixels[frames // 2]
    if samples == 3:
        pixels = pixels @ LUMA
    elif samples != 1:
        raise LungCNNInputError(f"{name}: DICOM images with {samples} samples per pixel are not supported (1 or 3)")
    return pixels


def _dicom_tags(ds, name: str) -> dict:
    """The tags `_read_dicom` uses, as checked plain values (every access may raise on a corrupt file)."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise LungCNNInputError(f"{name}: the DICOM file has no pixel data (no image to classify)")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        raise LungCNNInputError(f"{name}: the DICOM file lacks valid Rows/Columns tags") from None
    try:
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    except (TypeError, ValueError):
        raise LungCNNInputError(f"{name}: the DICOM file has invalid NumberOfFrames/SamplesPerPixel tags") from None
    rescale = {}
    for key in ("RescaleSlope", "RescaleIntercept"):
        value = getattr(ds, key, None)
        try:
            rescale[key] = None if value is None or value == "" else float(value)
        except (TypeError, ValueError):
            raise LungCNNInputError(f"{name}: the DICOM tag {key} is not a number ({value!r})") from None
        if rescale[key] is not None and not np.isfinite(rescale[key]):
            raise LungCNNInputError(f"{name}: the DICOM tag {key} is not finite ({value!r})")
    return {"rows": rows, "cols": cols, "frames": frames, "samples": samples,
            "photometric": str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")),
            "modality": str(getattr(ds, "Modality", "CT")),
            "slope": rescale["RescaleSlope"] or 1.0, "intercept": rescale["RescaleIntercept"]}
