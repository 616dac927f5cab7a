"""``python -m easyedit_liveedit``: the ``easyedit-liveedit`` command line (see ``bench/cli.py``).

Without arguments it prints the usage and EasyEdit's editor tables with LiveEdit registered (``methods``).
"""

from __future__ import annotations

import sys

from .bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
