"""`python -m specvlm.serve`: the same as `specvlm serve`."""

import sys

from specvlm.serve.cli import main

sys.exit(main())
