"""``python -m prunelab.reproductions.mobile OUTDIR [--dest DIR]``: the ``mobile`` suite's report."""

import sys

from prunelab.reproductions.mobile.report import main

sys.exit(main(sys.argv[1:]))
