"""``python -m facial_search.cli``: the command line."""

import sys

from facial_search.cli import main

sys.exit(main())
