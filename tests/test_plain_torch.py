"""CIM without PyCIL: `examples/plain_torch.py` (a small CNN, a hand-written loop, synthetic images) drives
the framework-free CIM object through two phases. This is the example for users of other toolboxes; the
user guide (docs/guide.md) shows its core, and the guide's snippet must be the example's own lines."""

import importlib.util
import io
import pickle
import re
import subprocess
import sys

import torch
from conftest import REPO

EXAMPLE = REPO / "examples" / "plain_torch.py"


def _example():
    spec = importlib.util.spec_from_file_location("plain_torch_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plain_torch_loop_runs_cim_through_two_phases():
    from cim_plugin.method.cim import CIM
    from cim_plugin.method.masks.cim_branch import CIMBranch

    torch.set_num_threads(1)
    cim, net, records = _example().main(epochs=2, per_class=16, log=lambda line: None)
    assert len(records) == 2
    for record in records:  # real bytes held, within the budget, after each phase
        assert 0 < record["memory_bytes"] <= record["memory_budget_bytes"] == 12 * 3 * 32 * 32
        assert record["meta_steps"] > 0 and record["calls"]["box_refresh"] == 1
    # compression buys more exemplars than the 12 full images the budget would hold
    assert records[1]["exemplars"] > 12 and sorted(cim.memory.counts()) == [0, 1, 2, 3, 4, 5]
    # the meta steps changed φ: away from the ReLU fit PAUs start from, and again in phase 2
    fresh = CIMBranch(num_sites=cim.branch.num_sites)
    phi0, phi1 = records[0]["phi"], records[1]["phi"]
    assert any(not torch.equal(a, b) for a, b in zip(phi0, fresh.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(phi0, phi1))
    # phase 2 replays the compressed memory: in its training data and in the meta batches
    assert records[0]["replayed"] == 0 and records[1]["replayed"] == records[0]["exemplars"]
    assert sum(s["memory_items"] for s in cim.meta_log) > 0

    # state_dict / load_state_dict carry memory, φ and the generator into a fresh object (via torch.save)
    buffer = io.BytesIO()
    torch.save(cim.state_dict(), buffer)
    buffer.seek(0)
    other = CIM()
    other.load_state_dict(torch.load(buffer, weights_only=False))
    assert torch.equal(other.memory.decode(torch.arange(len(cim.memory))), cim.memory.decode(torch.arange(len(cim.memory))))
    assert all(torch.equal(a, b) for a, b in zip(other.branch.parameters(), cim.branch.parameters()))
    assert torch.equal(other.generator.get_state(), cim.generator.get_state()) and other.config == cim.config
    clone = pickle.loads(pickle.dumps(cim))  # checkpoints pickle the object: the host's callables are left out
    assert clone.view is None and clone.memory.nbytes == cim.memory.nbytes and clone.meta_log == cim.meta_log


def test_the_example_imports_nothing_of_pycil():
    code = ("import runpy, sys; runpy.run_path(sys.argv[1]); "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('models', 'utils', 'convs', 'trainer') "
            "or m.startswith('cim_plugin.pycil')); print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code, str(EXAMPLE)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]


def test_the_guide_shows_the_examples_own_lines():
    guide = (REPO / "docs" / "guide.md").read_text()
    section = guide.split("## CIM in another training loop", 1)[1].split("\n## ", 1)[0]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    example = {line.split("  # noqa")[0].strip() for line in EXAMPLE.read_text().splitlines()}
    lines = [line.strip() for line in snippet.splitlines() if line.strip() and line.strip() != "..."]
    assert len(lines) >= 10
    assert [line for line in lines if line not in example] == []
