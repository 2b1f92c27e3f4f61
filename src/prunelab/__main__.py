import sys

from prunelab.cli.main import main

sys.exit(main())
