"""``python -m fastconv bench ...``"""

import sys

from .cli import main

sys.exit(main())
