"""``python -m prunelab.reproductions.diao OUTDIR [--dest DIR]``: the ``pqi`` suite's figures, claim checks and JSON."""

import sys

from prunelab.reproductions.diao.report import main

sys.exit(main(sys.argv[1:]))
