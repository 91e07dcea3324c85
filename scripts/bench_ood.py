"""How well a checkpoint's domain guard knows when not to answer, and what it costs.

    python scripts/bench_ood.py --ckpt outputs/ood/checkpoints/best.calibrated.ckpt --out bench_ood.json

In-domain: the checkpoint's own test split (grouped: patients the network, the bank and the threshold never
saw) and its validation split. Out of domain, built from what installed packages ship plus drawn patterns:
every DICOM test file pydicom has locally (MR, ultrasound, colour, a head CT, ...), matplotlib's sample
photographs, Pillow-drawn "photographs", flat images, noise, gradients, checkerboards and text; and CT that a
lung classifier must not judge: the test split's images inverted (a MONOCHROME1 slice decoded the wrong way round)
and, where ../shared is present, the annotated DICOM series' neck and abdominal slices. Each set's share stopped
by the lung check (`lungcrop.find_lung_fields`, whether or not the checkpoint turns it on) is reported too. Reports
ROC-AUC (test split vs out-of-domain set, score = domain score), the share flagged of each set at the
checkpoint's threshold with 95% Clopper-Pearson intervals, and the guard's cost in model throughput:
batches of 32 through the same network with and without the guard, PyTorch and onnxruntime, interleaved
repeats, median images/s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from lungcnn.data.labelled import labelled_images
from lungcnn.data.lungcrop import lungs_in_view
from lungcnn.errors import LungCNNInputError
from lungcnn.fileio import write_json
from lungcnn.inference.onnx_export import onnx_bytes
from lungcnn.inference.onnx_runtime import OnnxBackend, cpu_count
from lungcnn.inference.predictor import Predictor, TorchBackend
from lungcnn.metrics.bootstrap import clopper_pearson
from lungcnn.models.checkpoint import build_guard, build_network, load_checkpoint


def pydicom_files() -> list[tuple[str, bytes]]:
    from pydicom.data import get_testdata_files

    return [(f"pydicom/{Path(p).name}", Path(p).read_bytes()) for p in sorted(get_testdata_files("*.dcm"))]


def matplotlib_photos() -> list[tuple[str, bytes]]:
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "sample_data"
    return [(f"matplotlib/{p.name}", p.read_bytes()) for p in sorted(folder.glob("*")) if p.suffix.lower() in (".jpg", ".png")]


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def drawn(seed: int = 0, size: int = 256) -> list[tuple[str, bytes]]:
    """Patterns a user might upload by mistake, or a broken export might produce."""
    rng = np.random.default_rng(seed)
    out: list[tuple[str, bytes]] = []
    for level in (0, 64, 128, 200, 255):
        out.append((f"flat_{level}", _png(np.full((size, size), level, np.uint8))))
    for i in range(4):
        out.append((f"noise_uniform_{i}", _png(rng.integers(0, 256, (size, size), dtype=np.uint8))))
        out.append((f"noise_gauss_{i}", _png(np.clip(rng.normal(128, 40, (size, size)), 0, 255).astype(np.uint8))))
    ramp = np.linspace(0, 255, size)
    yy, xx = np.mgrid[:size, :size]
    radial = np.hypot(yy - size / 2, xx - size / 2)
    out += [("gradient_h", _png(np.tile(ramp, (size, 1)).astype(np.uint8))),
            ("gradient_v", _png(np.tile(ramp[:, None], (1, size)).astype(np.uint8))),
            ("gradient_radial", _png((255 * radial / radial.max()).astype(np.uint8))),
            ("checkerboard", _png((((yy // 32) + (xx // 32)) % 2 * 255).astype(np.uint8)))]
    for i in range(6):
        im = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(im)
        for _ in range(8):
            box = sorted(rng.integers(0, size, 2)), sorted(rng.integers(0, size, 2))
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            shape((box[0][0], box[1][0], box[0][1], box[1][1]), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        out.append((f"drawn_photo_{i}", _png(np.asarray(im))))
    text = Image.new("L", (size, size), 255)
    ImageDraw.Draw(text).multiline_text((10, 10), "Patient letter\nDear colleague,\nplease find attached\n" * 3, fill=0)
    out.append(("text_page", _png(np.asarray(text))))
    return out


SHARED_DICOM = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lung-pet-ct-dx-dev" / "A0001"
NON_LUNG_SLICES = [*range(1, 7), *range(57, 65)]  # its neck and abdominal slices (instance numbers), read off the images


def inverted(images: np.ndarray) -> list[tuple[str, bytes]]:
    return [(f"inverted_{i}.png", _png(255 - image)) for i, image in enumerate(images)]


def non_lung_slices() -> list[tuple[str, bytes]]:
    if not SHARED_DICOM.is_dir():
        return []
    return [(f"dicom/1-{i:02d}.dcm", (SHARED_DICOM / f"1-{i:02d}.dcm").read_bytes()) for i in NON_LUNG_SLICES]


def scores_of(predictor: Predictor, items: list[tuple[str, bytes]]) -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
    """Domain scores of the items that read (and the names of those that did not), and the lung check's verdicts."""
    names, images, unreadable = [], [], []
    for name, data in items:
        try:
            images.append(predictor.load(data, name=name))
            names.append(name)
        except LungCNNInputError:
            unreadable.append(name)
    lungs = np.array([lungs_in_view(image) for image in images], dtype=bool)
    return names, predictor.forward(np.stack(images))[1], unreadable, lungs


def share(flags: np.ndarray) -> dict:
    k, n = int(np.sum(flags)), len(flags)
    return {"flagged": k, "n": n, "share": k / n if n else None, "ci95": list(clopper_pearson(k, n))}


def throughput(backends: dict, batch: np.ndarray, repeats: int) -> dict[str, float]:
    """Median images/s per backend over interleaved repeats (the machine's other load hits each alike)."""
    times: dict[str, list[float]] = {name: [] for name in backends}
    for _ in range(repeats):
        for name, backend in backends.items():
            start = time.perf_counter()
            backend.forward(batch)
            times[name].append(time.perf_counter() - start)
    return {name: len(batch) / float(np.median(t)) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="a calibrated checkpoint with a domain guard")
    parser.add_argument("--out", default="bench_ood.json")
    parser.add_argument("--repeats", type=int, default=7, help="throughput repeats per backend")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    spec, state = load_checkpoint(args.ckpt)
    if spec.guard is None:
        raise SystemExit(f"{args.ckpt} has no domain guard: run lungcnn.calibrate first")
    net, guard = build_network(spec, state), build_guard(spec, state)
    predictor = Predictor(spec, net, guard=guard)
    result: dict = {"ckpt": str(args.ckpt), "guard": {"k": spec.guard.k, "threshold": spec.guard.threshold,
                                                       "fitted_on": spec.guard.fitted_on},
                    "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "machine": {"cores": cpu_count(), "loadavg": os.getloadavg()}}
    splits, test_images = {}, None
    for split in ("test", "val"):
        images = labelled_images(spec.data, spec.preprocessing, spec.class_names, split).images
        test_images = images if split == "test" else test_images
        splits[split] = predictor.forward(images)[1]
        no_lungs = ~np.array([lungs_in_view(image) for image in images], dtype=bool)
        result[f"{split}_split"] = {**share(~spec.guard.in_domain(splits[split])), "no_lungs": share(no_lungs)}
    groups = {"pydicom": pydicom_files(), "matplotlib": matplotlib_photos(), "drawn": drawn(),
              "inverted": inverted(test_images), "non_lung": non_lung_slices()}
    ood_scores, per_file = [], {}
    for group, items in groups.items():
        if not items:
            continue
        names, scores, unreadable, lungs = scores_of(predictor, items)
        ood_scores.append(scores)
        per_file.update({n: float(s) for n, s in zip(names, scores)})
        flagged = ~spec.guard.in_domain(scores)
        result[f"ood_{group}"] = {**share(flagged), "unreadable": unreadable, "no_lungs": share(~lungs),
                                  "not_judged": share(flagged | ~lungs)}
    ood = np.concatenate(ood_scores)
    result["ood_all"] = share(~spec.guard.in_domain(ood))
    result["ood_missed"] = {n: s for n, s in per_file.items() if s <= spec.guard.threshold}
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.zeros(len(splits["test"])), np.ones(len(ood))]
    result["auroc_test_vs_ood"] = float(roc_auc_score(y, np.r_[splits["test"], ood]))
    result["scores"] = {"test_max": float(splits["test"].max()), "ood_min": float(ood.min()),
                        "test_median": float(np.median(splits["test"])), "ood_median": float(np.median(ood))}
    x = predictor.normalise(np.stack([predictor.load(d, name=n) for n, d in groups["drawn"][: args.batch]] * 2)[: args.batch])
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, s, g in (("onnx", spec.replace(guard=None), None), ("onnx+guard", spec, guard)):
            paths[name] = Path(tmp) / f"{name}.onnx"
            paths[name].write_bytes(onnx_bytes(net, s, g))
        backends = {"torch": TorchBackend(net), "torch+guard": TorchBackend(net, guard=guard),
                    "onnx": OnnxBackend(paths["onnx"]), "onnx+guard": OnnxBackend(paths["onnx+guard"])}
        ips = throughput(backends, x, args.repeats)
    result["images_per_s"] = ips
    result["guard_cost"] = {b: 1 - ips[f"{b}+guard"] / ips[b] for b in ("torch", "onnx")}
    result["goal"] = {"ood_flagged>=0.99": result["ood_all"]["share"] >= 0.99,
                      "new_patients_flagged<=0.02": result["test_split"]["share"] <= 0.02,
                      "throughput_cost<=0.10": max(result["guard_cost"].values()) <= 0.10}
    write_json(args.out, result)
    for key in ("test_split", "val_split", "ood_pydicom", "ood_matplotlib", "ood_drawn", "ood_inverted", "ood_non_lung",
                "ood_all"):
        if key not in result:
            continue
        r = result[key]
        lo, hi = r["ci95"]
        lungs = f"; no lungs {r['no_lungs']['flagged']}/{r['no_lungs']['n']}" if "no_lungs" in r else ""
        print(f"{key:<16} flagged {r['flagged']:>3}/{r['n']:<3} = {r['share']:.3f} (95% CI {lo:.3f}-{hi:.3f}){lungs}")
    print(f"AUROC test vs OOD {result['auroc_test_vs_ood']:.4f}; scores {result['scores']}")
    print(f"missed OOD: {result['ood_missed']}")
    print(f"images/s {ips}; guard cost {result['guard_cost']}; goal {result['goal']}")


if __name__ == "__main__":
    main()
