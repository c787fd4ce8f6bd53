"""Thin entry point: ``python src/pipeline/runner.py [key=value ...]``."""

import sys
from pathlib import Path

from conveyor.cli import main

if __name__ == "__main__":
    sys.argv[1:1] = ["run", str(Path(__file__).resolve().parent)]
    main()
