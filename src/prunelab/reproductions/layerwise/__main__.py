"""``python -m prunelab.reproductions.layerwise OUTDIR [--dest DIR]``: the ``layerwise`` suite's report."""

import sys

from prunelab.reproductions.layerwise.report import main

sys.exit(main(sys.argv[1:]))
