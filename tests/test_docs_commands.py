"""Every command the README and docs/ show exists and answers `--help` as written.

Commands are collected from code (backticks and fenced blocks): `lungcnn <command> [subcommand]`,
`lungcnn-<command>`, `python -m lungcnn.<module>` and `make <target>`. Each distinct command runs once, in this
process, with `--help` in place of its arguments.
"""

from __future__ import annotations

import logging
import re
import runpy
import sys
import tomllib

import pytest

from lungcnn.cli import COMMANDS
from lungcnn.cli import main as lungcnn_main

from .conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
CODE = re.compile(r"```[a-z]*\n(.*?)```|`([^`\n]+)`", re.S)
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
CV_SUBCOMMANDS = ("run", "summary", "compare", "series", "crossfit")


def _code(text: str) -> str:
    return "\n".join(block or span for block, span in CODE.findall(text))


def collect() -> dict[str, set[tuple[str, ...]]]:
    found: dict[str, set[tuple[str, ...]]] = {"lungcnn": set(), "script": set(), "module": set(), "make": set()}
    for page in PAGES:
        code = _code(page.read_text(encoding="utf-8"))
        for name, sub in re.findall(r"(?<![\w./-])lungcnn (\S+)(?: (\w+))?", code):
            if re.fullmatch(r"[a-z][a-z-]*", name):
                found["lungcnn"].add((name, sub) if name == "cv" and sub in CV_SUBCOMMANDS else (name,))
        found["script"] |= {(s,) for s in re.findall(r"(?<![\w./])(lungcnn-[a-z][a-z-]*[a-z])(?![\w/-])", code)}
        found["module"] |= {(m,) for m in re.findall(r"python -m (lungcnn(?:\.\w+)+)", code)}
        found["make"] |= {(t,) for t in re.findall(r"(?<![\w-])make ([a-z][a-z-]*)", code)}
    return found


FOUND = collect()


@pytest.fixture(autouse=True)
def _logging_as_it_was():
    # Hydra's commands configure logging in this process: handlers on this test's captured stderr would outlive it
    # and break later tests' logging ("I/O operation on closed file").
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger))]
    saved = [(lg, lg.handlers[:], lg.level, lg.propagate, lg.disabled) for lg in loggers]
    yield
    for lg, handlers, level, propagate, disabled in saved:
        lg.handlers[:], lg.level, lg.propagate, lg.disabled = handlers, level, propagate, disabled


def _help(main, capsys) -> str:
    try:
        main()
    except SystemExit as e:
        assert e.code in (0, None), f"exit {e.code}"
    return capsys.readouterr().out


def test_the_pages_show_commands_of_every_kind():
    assert all(FOUND.values()), {k: len(v) for k, v in FOUND.items()}
    assert ("train",) in FOUND["lungcnn"] and ("demo",) in FOUND["make"] and ("test",) in FOUND["make"]


@pytest.mark.parametrize("words", sorted(FOUND["lungcnn"]), ids=" ".join)
def test_lungcnn_command_answers_help(words, monkeypatch, capsys):
    assert words[0] in COMMANDS, f"`lungcnn {words[0]}` is not a command"
    monkeypatch.setattr(sys, "argv", ["lungcnn", *words, "--help"])
    assert _help(lambda: lungcnn_main(), capsys).strip()


@pytest.mark.parametrize("script", sorted(s for (s,) in FOUND["script"]))
def test_script_exists(script):
    assert script in SCRIPTS, f"{script} is not in pyproject.toml's [project.scripts]"


@pytest.mark.parametrize("module", sorted(m for (m,) in FOUND["module"]))
def test_python_m_form_answers_help(module, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    assert _help(lambda: runpy.run_module(module, run_name="__main__", alter_sys=True), capsys).strip()


@pytest.mark.parametrize("target", sorted(t for (t,) in FOUND["make"]))
def test_make_target_exists(target):
    assert re.search(rf"^{re.escape(target)}:", (ROOT / "Makefile").read_text(), re.M), f"no make target {target}"
