"""``python -m benchmarks [--quick]``: run the whole benchmark."""

import sys

from benchmarks.run import main

sys.exit(main())
