"""`python -m lungcnn.doctor`: one OK/WARN/FAIL line per check, exit 0, never a traceback."""

from __future__ import annotations

import re
import subprocess
import sys

from lungcnn.training import doctor

from .conftest import ROOT


def test_doctor_runs_and_reports_every_check():
    done = subprocess.run([sys.executable, "-m", "lungcnn.doctor"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "lungcnn doctor" and re.fullmatch(r"\d+ OK, \d+ WARN, \d+ FAIL.*", lines[-1])
    checks = lines[1:-1]
    assert all(re.match(r"(OK|WARN|FAIL) ", line) for line in checks), checks
    for what in ("python", "torch", "lightning", "timm", "imagenet weights (mobilenetv2_100)", "cpu", "cuda",
                 "demo data", "demo best.ckpt", "shared data", "chromium"):
        assert any(line.split(None, 1)[1].startswith(what) for line in checks), what
    assert "Traceback" not in done.stdout + done.stderr


def test_a_broken_check_is_a_fail_line_not_a_crash(monkeypatch):
    def broken():
        raise RuntimeError("weights file is corrupt")
        yield  # a generator, like every check

    monkeypatch.setitem(doctor.CHECKS, "imagenet weights", broken)
    monkeypatch.setitem(doctor.CHECKS, "packages", lambda: iter([]))  # keep it quick
    out = doctor.format_checks(doctor.run_checks())
    assert re.search(r"^FAIL\s+imagenet weights\s+RuntimeError: weights file is corrupt$", out, re.M)
    assert "1 FAIL" in out.splitlines()[-1]
