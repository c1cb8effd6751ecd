"""``python -m lorainbox.worker JOBDIR``: the supervisor starts one job this way."""

import sys

from lorainbox.worker.main import main

sys.exit(main())
