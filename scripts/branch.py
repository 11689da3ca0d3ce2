"""The critical batch by branching, a recommended batch size and a batch-size schedule.

The same as ``batchsize-study branch``; the flags are in ``--help`` and docs/branch.md.
"""

import sys

from batchsize_study.commands import branch

if __name__ == "__main__":
    sys.exit(branch())
