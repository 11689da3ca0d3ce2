"""Browse a study in optuna-dashboard: ``python scripts/dashboard.py [--storage URL]``.

The same as ``batchsize-study dashboard``; the flags are in ``--help`` and the README.
"""

import sys

from batchsize_study.commands import dashboard

if __name__ == "__main__":
    sys.exit(dashboard())
