"""Cost of the PAU (the mask branch's activation) on the CPU without a graph: box refreshes, the memory build.

Prints, for activations of the given shapes, the time of ReLU, of the PAU as one pass over the whole tensor
(every elementwise step streams the whole activation through memory), and of the PAU as it runs (blocks of
``CPU_BLOCK`` elements that stay in cache; bitwise the same values); then, when the PyCIL submodule is
there, one forward of a 2-backbone DER network (resnet32, 32×32, batch 256, eval, no grad) plain and through
the CIM branch, whole-tensor and blocked. One thread unless ``--threads`` says otherwise; best of
``--repeats`` after a warm-up, so a loaded machine shows in the spread, not in the minimum.

Run: ``python benchmarks/bench_pau.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # run from a checkout

import cim_plugin.method.masks.pau as pau_module  # noqa: E402
from cim_plugin.method.masks.cim_branch import CIMBranch  # noqa: E402
from cim_plugin.method.masks.pau import PAU  # noqa: E402


def best(fn, repeats: int) -> float:
    """Minimum wall seconds of ``fn()`` over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def whole_tensor(fn):
    """``fn`` run with blocking off (one pass per elementwise step over the whole tensor)."""
    def run():
        saved = pau_module.CPU_BLOCK
        pau_module.CPU_BLOCK = 1 << 62
        try:
            return fn()
        finally:
            pau_module.CPU_BLOCK = saved
    return run


def activation_rows(shapes, repeats):
    pau = PAU(zero_at_zero=True)
    print("| activation | ReLU (ms) | PAU, whole tensor (ms) | PAU, blocked (ms) | speed-up |")
    print("|---|---|---|---|---|")
    for shape in shapes:
        x = torch.randn(*shape)
        with torch.no_grad():
            relu = best(lambda: torch.relu(x), repeats)
            whole = best(whole_tensor(lambda: pau(x)), repeats)
            blocked = best(lambda: pau(x), repeats)
        print(f"| {'×'.join(map(str, shape))} | {relu * 1e3:.1f} | {whole * 1e3:.1f} | {blocked * 1e3:.1f} | "
              f"{whole / blocked:.1f}× |")


def branch_rows(repeats):
    from cim_plugin.pycil import import_pycil
    from cim_plugin.pycil.host import PyCILMissing
    from cim_plugin.pycil.network import FmapView

    try:
        import_pycil()
    except PyCILMissing as err:
        print(f"\n(the network rows are skipped: {err})")
        return
    from utils.inc_net import DERNet

    torch.manual_seed(0)
    net = DERNet({"convnet_type": "resnet32", "device": ["cpu"]}, False)
    net.update_fc(5)
    net.update_fc(10)
    view = FmapView(net.eval())
    x = torch.rand(256, 3, 32, 32)
    branch = CIMBranch()
    branch.ensure_sites(view, x[:2])
    with torch.no_grad():
        plain = best(lambda: view(x), repeats)
        whole = best(whole_tensor(lambda: branch(view, x)), repeats)
        blocked = best(lambda: branch(view, x), repeats)
    print("\n| DER, 2 × resnet32, 256 images 32×32, no grad | seconds | × plain |")
    print("|---|---|---|")
    for name, t in (("plain forward (ReLU)", plain), ("CIM branch, PAU whole tensor", whole),
                    ("CIM branch, PAU blocked", blocked)):
        print(f"| {name} | {t:.3f} | {t / plain:.2f} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU_BLOCK {pau_module.CPU_BLOCK}\n")
    activation_rows([(256, 16, 32, 32), (256, 32, 16, 16), (256, 64, 8, 8), (64, 64, 56, 56)], args.repeats)
    branch_rows(max(2, args.repeats // 2))


if __name__ == "__main__":
    main()
