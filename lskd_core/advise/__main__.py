import sys

from lskd_core.advise.cli import main

sys.exit(main())
