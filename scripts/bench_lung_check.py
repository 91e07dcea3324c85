"""How often the lung check (`lungcnn.data.lungcrop.lungs_in_view`) says "no lungs in view", per shared source.

    python scripts/bench_lung_check.py --shared ../shared/data --out lung_check.csv

Every image of the four shared sources, rendered as the committed reference model sees it (224 px; DICOM
through its window, level 50 / width 400), as it is and inverted (a MONOCHROME1 slice decoded the wrong way
round). Slices known to hold no lungs: the DICOM series' neck (1-01..1-06) and abdominal (1-57..1-64) slices,
read off the images. IQ-OTH/NCCD's new patients: the reference model's test split (its groups were never
trained on). Prints the share of each set flagged with a 95% Clopper-Pearson interval; writes one row per image.

`--against OLD.py` (another version of the module, e.g. `git show REV:lungcnn/data/lungcrop.py > OLD.py`) runs
that version beside this one on every image, interleaved: it prints how many images get other lung fields (masks,
body or reason) and the time per image of each, with their ratio measured in the same run.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from lungcnn.data.io import LungWindow
from lungcnn.data.lungcrop import NO_BODY, find_lung_fields
from lungcnn.data.transforms import load_for_model
from lungcnn.fileio import atomic_open
from lungcnn.metrics.bootstrap import clopper_pearson

SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm"}
NECK, ABDOMEN = range(1, 7), range(57, 65)  # DICOM instance numbers without lungs in view


def images(shared: Path) -> list[tuple[str, Path]]:
    return [(source.name, p) for source in sorted(shared.iterdir()) if source.is_dir()
            for p in sorted(source.rglob("*")) if p.suffix.lower() in SUFFIXES]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default="../shared/data")
    parser.add_argument("--split", default="models/lungcnn-iqothnccd-binary.split.csv",
                        help="the reference model's split (file,split): its test rows are IQ-OTH/NCCD's new patients")
    parser.add_argument("--out", default="lung_check.csv")
    parser.add_argument("--against", type=Path, help="another version's lungcrop.py to compare with (see above)")
    args = parser.parse_args()
    shared, rows = Path(args.shared), []
    window = LungWindow(level=50, width=400)
    other = _module(args.against) if args.against else None
    seconds, differ = np.zeros(2), []
    for source, path in images(shared):
        image = load_for_model(path, 224, window)
        for inverted in (False, True):
            pixels = 255 - image if inverted else image
            start = time.perf_counter()
            fields = find_lung_fields(pixels)
            seconds[0] += time.perf_counter() - start
            if other is not None:
                start = time.perf_counter()
                theirs = other.find_lung_fields(pixels)
                seconds[1] += time.perf_counter() - start
                if not _same(fields, theirs):
                    differ.append(f"{source}/{path.name}{' (inverted)' if inverted else ''}")
            rows.append({"source": source, "file": str(path.relative_to(shared / source)), "inverted": inverted,
                         "found": fields.found, "area": fields.area, "reason": fields.reason,
                         "lungs_in_view": fields.found or fields.reason == NO_BODY})
    table = pd.DataFrame(rows)
    with atomic_open(args.out, "w", newline="", encoding="utf-8") as f:
        table.to_csv(f, index=False)
    split = pd.read_csv(args.split)
    test = set(split.loc[split["split"] == "test", "file"].astype(str))
    plain = table[~table["inverted"]]
    dicom = plain[plain["source"] == "lung-pet-ct-dx-dev"]
    number = dicom["file"].str.extract(r"-(\d+)\.dcm$")[0].astype(int)
    sets = {
        **{f"{s} (all)": plain[plain["source"] == s] for s in sorted(plain["source"].unique())},
        "iqothnccd-dev new patients (reference test split)": plain[(plain["source"] == "iqothnccd-dev")
                                                                    & plain["file"].isin(test)],
        "DICOM neck slices 1-01..1-06": dicom[number.isin(NECK)],
        "DICOM abdominal slices 1-57..1-64": dicom[number.isin(ABDOMEN)],
        "DICOM slices 1-07..1-56": dicom[~number.isin(NECK) & ~number.isin(ABDOMEN)],
        "inverted (all sources)": table[table["inverted"]],
    }
    for name, rows in sets.items():
        k, n = int((~rows["lungs_in_view"]).sum()), len(rows)
        lo, hi = clopper_pearson(k, n)
        print(f"{name:<52} no lungs {k:>4}/{n:<4} = {k / max(n, 1):.3f} (95% CI {lo:.3f}-{hi:.3f})")
    if other is not None:
        ms = 1000 * seconds / len(table)
        print(f"against {args.against}: {len(differ)} of {len(table)} images get other lung fields {differ[:10]}; "
              f"{ms[0]:.2f} ms an image here, {ms[1]:.2f} there ({ms[1] / ms[0]:.2f}x)")


def _module(path: Path):
    spec = importlib.util.spec_from_file_location("lungcrop_against", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _same(a, b) -> bool:
    def equal(x, y):
        return (x is None and y is None) or (x is not None and y is not None and np.array_equal(x, y))

    return a.reason == b.reason and equal(a.lungs, b.lungs) and equal(a.body, b.body)


if __name__ == "__main__":
    main()
