"""`lungcnn.cli.friendly_errors`: bad input is one line and exit code 2; a bug keeps its traceback."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from .conftest import ROOT

COMMAND = """
import sys
from lungcnn.cli import friendly_errors
from lungcnn.errors import LungCNNInputError

@friendly_errors
def main():
{body}

main()
"""


def _run(body: str) -> subprocess.CompletedProcess:
    code = COMMAND.format(body=textwrap.indent(textwrap.dedent(body).strip(), "    "))
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_bad_input_is_exactly_one_line_and_exit_code_2():
    done = _run('raise LungCNNInputError("data.crop must be one of [\'lungs\', \'none\'], got \'brain\'")')
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["lungcnn: error: data.crop must be one of ['lungs', 'none'], got 'brain'"]


def test_input_error_wrapped_by_hydra_instantiate_is_still_one_line():
    done = _run("""
        from hydra.utils import instantiate
        instantiate({"_target_": "lungcnn.data.io.LungWindow", "width": -1})
    """)
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["lungcnn: error: data.window.width must be a number in (0, inf), got -1"]


@pytest.mark.parametrize("body", [
    'raise RuntimeError("internal inconsistency")',
    # a bug while handling an input error: its __context__ is the input error, yet it is still a bug
    """
    try:
        raise LungCNNInputError("bad file")
    except LungCNNInputError:
        raise RuntimeError("internal inconsistency")
    """,
], ids=["plain", "while-handling-input-error"])
def test_a_bug_keeps_its_traceback(body):
    done = _run(body)
    assert done.returncode not in (0, 2)
    assert "Traceback (most recent call last)" in done.stderr
    assert "RuntimeError: internal inconsistency" in done.stderr
    assert "lungcnn: error:" not in done.stderr
