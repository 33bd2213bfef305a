"""``python -m fastrdb``: the ``fastrdb`` console script."""

from __future__ import annotations

import sys

from fastrdb.cli import main

if __name__ == "__main__":
    sys.exit(main())
