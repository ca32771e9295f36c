"""``python -m ta``: see ``ta.cli``."""

import sys

from ta.cli import main

sys.exit(main())
