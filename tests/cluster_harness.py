"""Integration tests start their clusters through ``cluster.local`` (see there)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cluster.local import LocalCluster, free_ports, wait_until  # noqa: E402,F401
