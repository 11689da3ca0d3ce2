"""Write a study's report: ``python scripts/report.py [--storage URL] [--study-name NAME]``.

The same as ``batchsize-study report``; the flags are in ``--help`` and the README.
"""

import sys

from batchsize_study.commands import report

if __name__ == "__main__":
    sys.exit(report())
