"""``python -m lskd_core.study``."""

import sys

from lskd_core.study.cli import main

sys.exit(main())
