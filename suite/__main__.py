"""``python -m suite`` is the ``suite`` command (and what torchrun runs with ``-m suite``)."""

import sys

from suite.cli import main

sys.exit(main())
