"""``python -m fedpoison``: the ``fedpoison`` command."""

import sys

from fedpoison.cli import main

sys.exit(main())
