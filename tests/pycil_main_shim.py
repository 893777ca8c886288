"""Run PyCIL's own main.py (its trainer loop, unchanged) on a config.

Adapted only as far as needed to run at all on a CPU-only machine with the plug-in's datasets:
PyCIL's `_set_device` never selects the CPU, and its DataManager knows no synthetic dataset.
Used by the test that proves `exps/run.py` without "cim" gives PyCIL's numbers.

    python tests/pycil_main_shim.py CONFIG.json
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cim_plugin.config import with_defaults  # noqa: E402
from cim_plugin.pycil.host import import_pycil, patched, resolve_devices  # noqa: E402
from cim_plugin.pycil.runner import load_dataset  # noqa: E402


def main(config_path: str) -> None:
    trainer = import_pycil()
    import main as pycil_main  # PyCIL's main.py

    config = json.loads(Path(config_path).read_text())
    idata = load_dataset(with_defaults(config))

    def set_device(args):
        args["device"] = resolve_devices(args["device"])

    trainer._set_device = set_device
    patch_cfg = dict(config, _image_size=idata.image_size)
    with patched(patch_cfg, idata_hook=lambda name: idata):
        sys.argv = ["main.py", "--config", config_path]
        pycil_main.main()


if __name__ == "__main__":
    main(sys.argv[1])
