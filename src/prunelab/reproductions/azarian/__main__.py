"""``python -m prunelab.reproductions.azarian OUTDIR [--dest DIR]``: the ``ltp`` suite's report, figures and JSON."""

import sys

from prunelab.reproductions.azarian.report import main

sys.exit(main(sys.argv[1:]))
