"""`lungcnn-app-password`: read a password on standard input, print the secrets.toml lines for the page.

Prints a salted scrypt hash (never the password); on a terminal the password is typed twice, unseen.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Sequence
from typing import TextIO

from lungcnn.cli import friendly_errors
from lungcnn.errors import LungCNNInputError
from lungcnn.webapp.auth import hash_password, secrets_lines


def read_password(stdin: TextIO) -> str:
    """Twice through getpass on a terminal; else the first line of standard input."""
    if stdin.isatty():
        first = getpass.getpass("Password for the page: ")
        if getpass.getpass("Same password again: ") != first:
            raise LungCNNInputError("the two passwords differ")
        return first
    line = stdin.readline()
    if not line:
        raise LungCNNInputError("no password on standard input")
    return line.removesuffix("\n").removesuffix("\r")


@friendly_errors
def main(argv: Sequence[str] | None = None) -> None:
    argparse.ArgumentParser(prog="lungcnn-app-password", description=__doc__.splitlines()[0]).parse_args(argv)
    print(secrets_lines(hash_password(read_password(sys.stdin))), end="")


if __name__ == "__main__":
    main()
