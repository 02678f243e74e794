"""``python -m fedpoison.cli``: the ``fedpoison`` command without the installed script."""

import sys

from fedpoison.cli import main

sys.exit(main())
