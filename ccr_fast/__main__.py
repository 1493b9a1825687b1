"""``python -m ccr_fast train|eval|bench``."""
import sys

from .cli import main

sys.exit(main())
