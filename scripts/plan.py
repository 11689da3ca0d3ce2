"""What a study will cost, before it runs: the probe's cap, throughput, trainings and time.

The same as ``batchsize-study plan``; it takes the flags of ``run_study.py`` (and ``--json``).
"""

import sys

from batchsize_study.commands import plan

if __name__ == "__main__":
    sys.exit(plan())
