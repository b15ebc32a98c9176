"""``python -m fedagg.report <sweep folder>``: same as ``fedagg-report``."""
import sys

from .summary import main

sys.exit(main())
