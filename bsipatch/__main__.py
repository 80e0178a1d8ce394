"""``python -m bsipatch``: runs the CLI."""

import sys

from bsipatch.cli.main import main

sys.exit(main())
