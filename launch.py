"""Run an experiment TXT file: `python launch.py -c expts/demo/localization.txt -l` (see --help)."""

import sys

from egolab.launch.cli import main

if __name__ == "__main__":
    sys.exit(main())
