"""`lungcnn app [--host 127.0.0.1] [--port 8501] [--ckpt PATH]` (`make app`, `lungcnn-app`): the clinicians' page.

Checks the address first, then replaces itself with `streamlit run app/streamlit_app.py`; a page asked to listen
on the network with no sign-in configured does not start (`lungcnn.webapp.server`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from lungcnn.cli import friendly_errors
from lungcnn.webapp.server import serve


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lungcnn-app", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this computer)")
    parser.add_argument("--port", type=int, default=8501, help="port (default 8501)")
    parser.add_argument("--ckpt", help="checkpoint (default $LUNGCNN_CKPT, else the reference model in models/, else the demo's)")
    args = parser.parse_args(argv)
    if not 1 <= args.port <= 65535:
        parser.error(f"--port {args.port} is not a port number (1-65535)")
    return args


@friendly_errors
def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    serve(args.host, args.port, args.ckpt)


if __name__ == "__main__":
    main()
