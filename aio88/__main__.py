"""`python -m aio88` runs the `aio88` command."""

import sys

from ._cli import main

sys.exit(main())
