"""Probe the hardware: the largest batch whose training step fits in memory, and its speed.

The same as ``batchsize-study probe``; the flags are in ``--help`` and the README.
"""

import sys

from batchsize_study.commands import probe

if __name__ == "__main__":
    sys.exit(probe())
