"""Run the command line with ``python -m vgsalign``, as the workflow rules do."""

import sys

from vgsalign.cli import main

sys.exit(main())
