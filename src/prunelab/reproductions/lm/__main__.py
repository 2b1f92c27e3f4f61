"""``python -m prunelab.reproductions.lm OUTDIR [--dest DIR] [--data-dir DIR]``: the ``lm`` suites' report."""

import sys

from prunelab.reproductions.lm.report import main

sys.exit(main(sys.argv[1:]))
