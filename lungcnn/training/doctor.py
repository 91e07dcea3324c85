"""The environment check behind `lungcnn doctor`: is this machine ready to train, evaluate and serve?

One line per check, OK / WARN / FAIL, so a bug report can paste it whole. FAIL: something `make demo` or
the default config needs is missing or broken; WARN: optional or absent-by-choice (no GPU, no shared data,
no browser for the UI test). Never raises, and exits 0: it reports, the commands themselves refuse.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
DEMO_DATA = ROOT / ".demo_data" / "synthetic"
DEMO_RUN = ROOT / "outputs" / "demo" / "checkpoints"
CHROMIUM = Path("/usr/bin/chromium")

REQUIRED = ("torch", "torchvision", "lightning", "torchmetrics", "timm", "hydra-core", "albumentations",
            "opencv-python-headless", "pydicom", "pillow", "numpy", "pandas", "scikit-learn", "scipy", "safetensors",
            "onnx", "onnxruntime", "streamlit", "grad-cam", "matplotlib")
OPTIONAL = {"wandb": "logger=wandb", "tensorboard": "logger=tensorboard", "playwright": "the browser test",
            "hypothesis": "tests/test_fuzz.py", "pytest": "make test", "ruff": "make lint"}

Check = tuple[str, str, str]  # (OK | WARN | FAIL, what, detail)


def _safely(fn: Callable[[], Iterator[Check]], what: str) -> Iterator[Check]:
    try:
        yield from fn()
    except Exception as e:  # a broken install must show up as a line, not a traceback
        yield "FAIL", what, f"{type(e).__name__}: {e}"


def check_python() -> Iterator[Check]:
    ok = sys.version_info >= (3, 11)
    detail = f"{platform.python_version()} ({sys.executable})" + ("" if ok else "; lungcnn needs >= 3.11")
    yield ("OK" if ok else "FAIL"), "python", detail
    try:
        yield "OK", "lungcnn", f"{importlib.metadata.version('lungcnn')} from {ROOT}"
    except importlib.metadata.PackageNotFoundError:
        yield "WARN", "lungcnn", f"not installed as a package (run `make install`); importing from {ROOT}"


def check_packages() -> Iterator[Check]:
    for name in REQUIRED:
        try:
            yield "OK", name, importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            yield "FAIL", name, "not installed (run `make install`)"
    for name, used_by in OPTIONAL.items():
        try:
            yield "OK", name, importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            yield "WARN", name, f"not installed (optional: {used_by})"


def check_weights() -> Iterator[Check]:
    from lungcnn.errors import LungCNNInputError
    from lungcnn.models.backbone import LOCAL_IMAGENET_WEIGHTS, create_backbone

    for backbone, locate in LOCAL_IMAGENET_WEIGHTS.items():
        try:
            path = locate()
        except LungCNNInputError as e:
            yield "FAIL", f"imagenet weights ({backbone})", str(e)
            continue
        create_backbone(backbone, pretrained="imagenet")  # reads the file and maps it onto timm's names
        yield "OK", f"imagenet weights ({backbone})", f"load from {path}"


def check_devices() -> Iterator[Check]:
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    yield "OK", "cpu", f"{cores} cores usable, torch uses {torch.get_num_threads()} threads ({platform.machine()})"
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        yield "OK", "cuda", f"{len(names)} device(s): {', '.join(names)} (CUDA {torch.version.cuda}); trainer=gpu"
    else:
        yield "WARN", "cuda", "no CUDA device: training runs on the CPU (trainer=cpu, the default)"


def check_demo() -> Iterator[Check]:
    images = [p for p in DEMO_DATA.rglob("*.png")] if DEMO_DATA.is_dir() else []
    if images:
        yield "OK", "demo data", f"{len(images)} images in {DEMO_DATA}"
    else:
        yield "WARN", "demo data", f"not generated yet ({DEMO_DATA}); `make demo` draws it"
    for name in ("best.ckpt", "best.calibrated.ckpt"):
        path = DEMO_RUN / name
        if not path.is_file():
            yield "WARN", f"demo {name}", f"not found ({path}); `make demo` trains and calibrates it"
            continue
        from lungcnn.models.checkpoint import load_checkpoint

        spec, _ = load_checkpoint(path)
        yield "OK", f"demo {name}", f"{path} loads ({spec.network.backbone}, classes {list(spec.class_names)})"


def check_shared() -> Iterator[Check]:
    data = SHARED / "data"
    if not data.is_dir():
        yield "WARN", "shared data", f"{data} not found (the real-image tests are skipped)"
        return
    sets = sorted(p.name for p in data.iterdir() if p.is_dir())
    yield "OK", "shared data", f"{data}: {', '.join(sets) or 'empty'}"


def check_browser() -> Iterator[Check]:
    chromium = CHROMIUM if CHROMIUM.exists() else (Path(found) if (found := shutil.which("chromium")) else None)
    if chromium is None:
        yield "WARN", "chromium", f"not found at {CHROMIUM} (the browser test is skipped; apt-get install chromium)"
        return
    try:
        version = subprocess.run([str(chromium), "--version"], capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        yield "WARN", "chromium", f"{chromium} does not run ({e})"
        return
    yield "OK", "chromium", f"{chromium} ({version or 'version unknown'})"


CHECKS = {"python": check_python, "packages": check_packages, "imagenet weights": check_weights,
          "devices": check_devices, "demo": check_demo, "shared data": check_shared, "chromium": check_browser}


def run_checks() -> list[Check]:
    return [line for what, fn in CHECKS.items() for line in _safely(fn, what)]


def format_checks(lines: list[Check]) -> str:
    """The report: a header, one aligned line per check, and the counts."""
    width = max(len(what) for _, what, _ in lines)
    rows = ["lungcnn doctor", *(f"{status:<5} {what:<{width}}  {detail}" for status, what, detail in lines)]
    counts = {s: sum(1 for line in lines if line[0] == s) for s in ("OK", "WARN", "FAIL")}
    rows.append(f"{counts['OK']} OK, {counts['WARN']} WARN, {counts['FAIL']} FAIL"
                + ("" if not counts["FAIL"] else ": fix the FAIL lines before `make demo`"))
    return "\n".join(rows)
