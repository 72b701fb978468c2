"""``python -m cckm_refresh``: the operator CLI (see ``cckm_refresh.cli``)."""

import sys

from cckm_refresh.cli import main

sys.exit(main())
