#!/usr/bin/env python
"""Run a PyCIL JSON config through cim-plugin.

    python exps/run.py exps/demo.json [--out DIR] [--resume | --overwrite] [--strict]
    python exps/run.py --config exps/der_cim.json      # PyCIL main.py's spelling works too

Without "cim": true the run is PyCIL's own code path (same numbers as PyCIL's main.py);
with it, the learner keeps a CompressedMemory. results.json is written after every phase.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cim_plugin.pycil.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
