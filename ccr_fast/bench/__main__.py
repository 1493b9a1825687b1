"""``python -m ccr_fast.bench`` — same as ``python -m ccr_fast bench``."""
import sys

from . import main

sys.exit(main())
