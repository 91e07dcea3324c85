"""DICOM pixel data -> numpy, through pydicom's own decoder plugins (pylibjpeg, GDCM, Pillow, RLE).

Hospital PACS export compressed transfer syntaxes (JPEG Lossless process 14, JPEG-LS, JPEG 2000, RLE, JPEG
baseline/extended). pydicom picks a plugin for each; lungcnn installs `pylibjpeg` with `pylibjpeg-libjpeg`
(JPEG, JPEG Lossless, JPEG-LS) and `pylibjpeg-openjpeg` (JPEG 2000), and pydicom decodes RLE itself.

One repair, tried only after every plugin has refused a frame: sequential-DCT JPEG (baseline, extended)
written with a start-of-scan spectral range of 0..0 instead of the 0..63 the standard requires. Older
encoders wrote it (pydicom's own `JPEG-lossy.dcm` is one); sequential decoding ignores the range, so IJG
libjpeg accepts such files, while libjpeg (pylibjpeg) and GDCM refuse them.
"""

from __future__ import annotations

import numpy as np

_SEQUENTIAL_DCT = {0xC0, 0xC1}  # SOF0 baseline, SOF1 extended (Huffman)
_NO_LENGTH = {0x01, *range(0xD0, 0xDA)}  # TEM, RSTn, SOI, EOI: markers without a length field


def pixel_array(ds) -> np.ndarray:
    """`ds.pixel_array`, with the sequential-JPEG scan-range repair when every plugin refused the data."""
    try:
        return ds.pixel_array
    except Exception:
        frames = _repaired_frames(ds)
        if frames is None:
            raise
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate(frames)
    return ds.pixel_array


def _repaired_frames(ds) -> list[bytes] | None:
    """The encapsulated frames with Se set to 63 in sequential-DCT scans that declare 0..0, or None if none does."""
    if not getattr(ds, "file_meta", None) or not ds.file_meta.get("TransferSyntaxUID", None):
        return None
    if not ds.file_meta.TransferSyntaxUID.is_compressed or "PixelData" not in ds:
        return None
    from pydicom.encaps import generate_frames

    try:
        frames = list(generate_frames(ds.PixelData, number_of_frames=int(getattr(ds, "NumberOfFrames", 1) or 1)))
    except Exception:  # not valid encapsulation: nothing to repair
        return None
    repaired = [_fix_scan_range(f) for f in frames]
    if all(r is None for r in repaired):
        return None
    return [r if r is not None else f for r, f in zip(repaired, frames)]


def _fix_scan_range(frame: bytes) -> bytes | None:
    data = bytearray(frame)
    i, sequential, changed = 2, False, False
    if data[:2] != b"\xff\xd8":
        return None
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None  # entropy-coded data or garbage: stop walking the headers
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1  # fill byte
            continue
        if marker in _NO_LENGTH:
            i += 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in _SEQUENTIAL_DCT:
            sequential = True
        if marker == 0xDA:  # SOS: Ns, Ns x (Cs, Td/Ta), Ss, Se, Ah/Al
            se = i + 4 + 1 + 2 * data[i + 4] + 1
            if sequential and se < len(data) and data[se - 1] == 0 and data[se] == 0:
                data[se] = 63
                changed = True
            break
        i += 2 + length
    return bytes(data) if changed else None
