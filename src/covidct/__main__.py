"""Allow ``python -m covidct``."""

import sys

from covidct.cli import main

sys.exit(main())
