"""``python -m prunelab.reproductions.pitas OUTDIR [--dest DIR] [--bench-json PATH]``: the ``pitas`` suite's report."""

import sys

from prunelab.reproductions.pitas.report import main

sys.exit(main(sys.argv[1:]))
