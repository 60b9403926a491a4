"""C{python -m twistedmail.cli}: the C{twistedmail} command."""

import sys

from twistedmail.cli import main

sys.exit(main())
