"""Tune batch size and learning rate: ``python scripts/run_study.py --trials 50``.

The same as ``batchsize-study run``; the flags are in ``--help`` and the README.
"""

import sys

from batchsize_study.commands import run

if __name__ == "__main__":
    sys.exit(run())
