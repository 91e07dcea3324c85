"""Leakage audit of a folder-per-class CT data set (the library behind `lungcnn-audit`, `lungcnn/audit.py`).

Slices of one scan are near-copies, and published IQ-OTH/NCCD results split them at random, so the
same patient lands in train and test. This audit finds what a grouped split needs, without any labels
from the user:

- exact duplicates (same bytes; same decoded pixels);
- near-duplicates: a 64-bit difference hash (dHash) of the `read_image` output (so DICOM works too)
  within `--threshold` bits;
- likely series: union-find over near-duplicate links plus links between neighbouring file numbers in
  one folder (`case (12).jpg` - `case (13).jpg`) whose hashes are within the looser
  `--series-threshold`, since adjacent file numbers are usually adjacent slices of one scan.

It writes `groups.csv` (file,label,group), which `lungcnn.data.catalog.scan_folder` reads for grouped
splits, and reports mixed-label groups, how many test images would see a near-duplicate or a same-group
image in training under a random versus a grouped split, the agreement (adjusted Rand index) with an
existing groups.csv, and a shortcut check: how well image size or the intensity histogram alone, with no
anatomy, separate the classes under grouped cross-validation.

Modules: ``hashing`` (fingerprints, near-duplicate pairs), ``series`` (grouping), ``leakage``,
``shortcuts``, ``run`` (the audit of one folder, groups.csv), ``summary`` (the printed lines).
"""

from lungcnn.data.audit.run import CLASS_FOLDERS, GROUPS_FILE, SERIES_THRESHOLD, THRESHOLD, audit, audit_folder
from lungcnn.data.audit.shortcuts import CV_FOLDS
from lungcnn.data.audit.summary import format_summary

__all__ = ["CLASS_FOLDERS", "CV_FOLDS", "GROUPS_FILE", "SERIES_THRESHOLD", "THRESHOLD", "audit", "audit_folder",
           "format_summary"]
