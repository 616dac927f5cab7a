"""``python -m easyedit_liveedit``: the ``easyedit-liveedit`` command line (see ``cli.py``).

Without arguments it prints the usage and EasyEdit's editor tables with LiveEdit registered (``methods``).
"""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
