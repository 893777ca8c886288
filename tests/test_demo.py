"""The front door: `bash setup.sh` ends with `exps/demo.sh`, baseline and CIM side by side on exps/demo.json,
which prints the results table and the paths of curves.png and exemplars.png. Run here on a tiny config."""

import json
import os
import subprocess
import sys

from conftest import REPO, requires_pycil, tiny_config, write_config


def test_setup_ends_with_the_side_by_side_demo():
    setup = (REPO / "setup.sh").read_text()
    demo_block = setup.split('if [ "$DEMO" = 1 ]; then', 1)[1].split("fi", 1)[0]
    assert "exps/demo.sh" in demo_block
    demo = (REPO / "exps" / "demo.sh").read_text()
    assert "exps/benchmark.py" in demo and "exps/demo.json" in demo and "--seeds 1993" in demo
    config = json.loads((REPO / "exps" / "demo.json").read_text())
    assert "cim" not in config, "the benchmark runs the demo with and without CIM; a \"cim\" key would be overridden"
    assert config["seed"] == [1993] and config["model_name"] == "icarl"


@requires_pycil
def test_demo_prints_the_table_and_the_figures(tmp_path):
    cfg = write_config(tmp_path / "demo.json", tiny_config(synthetic_num_classes=10, cam_update_interval=1))
    out = tmp_path / "demo_out"
    env = dict(os.environ, DEMO_CONFIG=str(cfg), DEMO_OUT=str(out), PYTHON=sys.executable, OMP_NUM_THREADS="1")
    result = subprocess.run(["bash", str(REPO / "exps" / "demo.sh")], capture_output=True, text=True, env=env,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("| demo |")]
    assert [line.split("|")[3].strip() for line in table] == ["baseline", "cim"]
    for name in ("curves.png", "exemplars.png"):
        assert f"{out / name}" in result.stdout and (out / name).stat().st_size > 0
