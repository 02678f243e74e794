"""``python -m fedpoison.cli``: the ``fedpoison`` command."""

import sys

from fedpoison.cli import main

sys.exit(main())
