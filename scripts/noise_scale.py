"""Estimate the gradient noise scale B_simple of a task, and the batch sizes it recommends.

The same as ``batchsize-study noise-scale``; the flags are in ``--help`` and the README.
"""

import sys

from batchsize_study.commands import noise_scale

if __name__ == "__main__":
    sys.exit(noise_scale())
