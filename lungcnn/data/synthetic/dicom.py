"""A synthetic CT series as a PACS exports it: one DICOM file per slice, meaningless file names.

The slices are one phantom patient's (`phantom.render_patient`), stored as Hounsfield units through the
lung window's inverse, with the tags a scanner writes (series and instance UIDs, ImagePositionPatient,
ImageOrientationPatient, InstanceNumber, rescale) and patient tags set to what the caller gives, so tests
can check that none of them leaks. Used by the series tests and `scripts/bench_series.py`. Not medical data.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from lungcnn.data.io import LungWindow
from lungcnn.data.synthetic.phantom import render_patient

PATIENT = {"PatientName": "Doe^Jane", "PatientID": "PID-0042", "PatientBirthDate": "19600101",
           "AccessionNumber": "ACC-7731"}


def ct_series(n_slices: int, size: int, *, cls: str = "malignant", seed: int = 0, spacing: float = 2.5,
              patient: Mapping[str, str] = PATIENT, window: LungWindow = LungWindow()) -> list[bytes]:
    """`n_slices` DICOM files (bytes, in slice order, feet to head) of one series of one phantom patient."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(seed)
    images = render_patient(rng, cls, n_slices, size)
    series_uid, study_uid, frame_uid = (generate_uid(entropy_srcs=[str(seed), part]) for part in ("series", "study", "frame"))
    out = []
    for k, image in enumerate(images):
        hu = np.round(window.level - window.width / 2 + image.astype(np.float64) / 255.0 * window.width)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(seed), "slice", str(k)])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, meta.MediaStorageSOPInstanceUID, "CT"
        ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.FrameOfReferenceUID = series_uid, study_uid, frame_uid
        for key, value in patient.items():
            setattr(ds, key, value)
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-size / 2, -size / 2, -300.0 + k * spacing]
        ds.SliceThickness, ds.PixelSpacing = spacing, [0.7, 0.7]
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = size, size, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -2048  # 12-bit unsigned storage, as most CT scanners write
        ds.PixelData = np.clip(hu + 2048, 0, 4095).astype(np.uint16).tobytes()
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


def write_ct_series(folder: str | Path, n_slices: int, size: int, *, seed: int = 0, shuffle: bool = True,
                    prefix: str = "IM", **kwargs) -> list[Path]:
    """Write `ct_series(...)` into `folder` under random names (as PACS exports do); return the paths in slice order."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = ct_series(n_slices, size, seed=seed, **kwargs)
    order = np.random.default_rng([seed, 1]).permutation(n_slices) if shuffle else np.arange(n_slices)
    paths = [folder / f"{prefix}{int(order[k]):05d}" for k in range(n_slices)]
    for path, data in zip(paths, files):
        path.write_bytes(data)
    return paths
