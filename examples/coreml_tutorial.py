"""Core ML Tools' magnitude-pruning tutorial, end to end, with sparsify (the main job).

    .venv/bin/python examples/coreml_tutorial.py                  # 8×8 digits, offline
    .venv/bin/python examples/coreml_tutorial.py --dataset mnist --download
    .venv/bin/python examples/coreml_tutorial.py --quick --out /tmp/demo   # seconds, for tests

The code lives in `sparsify.demo.coreml_tutorial` so that ``sparsify demo`` runs the same flow from an
installed wheel; read it there. This script only calls it.
"""

import sys

from sparsify.demo.coreml_tutorial import main

if __name__ == "__main__":
    sys.exit(main(prog="coreml_tutorial.py"))
