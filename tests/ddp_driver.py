"""Run several configs, one after the other, in one torchrun job (tests/test_distributed.py launches it).

    python -m torch.distributed.run --nproc_per_node=2 --standalone tests/ddp_driver.py PLAN.json

PLAN.json: [{"config": {...}, "out": "DIR"}, ...]. One job for all of them saves the start-up of a job per
config. Each process counts the files it writes (results.json, checkpoint.pt, exemplars.pt) into
``<out>.writes_rank<R>.json``, so the test can check that process 0 alone writes.
"""

import json
import os
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cim_plugin import io  # noqa: E402
from cim_plugin.pycil import checkpoint, distributed, mixin, runner  # noqa: E402

SAVE = checkpoint.save


def counting(function, counts: Counter):
    def wrapped(path, *args, **kwargs):
        counts[Path(path).name] += 1
        return function(path, *args, **kwargs)

    return wrapped


def main(plan_path: str) -> int:
    plan = json.loads(Path(plan_path).read_text())
    rank = os.environ.get("RANK", "0")
    for item in plan:
        counts: Counter = Counter()
        runner.write_json = counting(io.write_json, counts)
        checkpoint.save = mixin.save = counting(SAVE, counts)
        try:
            runner.run_config(item["config"], out_dir=Path(item["out"]))
        except Exception as err:
            print(distributed.failure_message(err), file=sys.stderr, flush=True)
            raise
        out = Path(item["out"])
        (out.parent / f"{out.name}.writes_rank{rank}.json").write_text(json.dumps(counts))
    distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
