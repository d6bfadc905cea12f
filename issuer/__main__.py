"""``python -m issuer`` is the ``issuer`` command."""

import sys

from issuer.cli import main

sys.exit(main())
