"""``python -m facial_search``: the command line."""

import sys

from facial_search.cli import main

sys.exit(main())
