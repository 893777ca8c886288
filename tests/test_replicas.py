"""CIM under data parallelism (cim_plugin.method.replicas, meta_step's grad_reduce), without PyCIL."""

import json

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_bilevel import _setup, _step

from cim_plugin.method.replicas import Replicas, digest


def test_share_takes_every_world_th_item_or_all_when_too_few():
    idx = torch.arange(7)
    assert Replicas(0, 2).share(idx).tolist() == [0, 2, 4, 6]
    assert Replicas(1, 2).share(idx).tolist() == [1, 3, 5]
    assert Replicas(2, 3).share(torch.arange(2)).tolist() == [0, 1]


def test_digest_names_contents():
    a = {"x": torch.arange(4), "y": [torch.zeros(2, 2), 3], "z": torch.tensor(5)}
    b = {"z": torch.tensor(5), "y": [torch.zeros(2, 2), 3], "x": torch.arange(4)}
    assert digest(a) == digest(b)
    assert digest(a) != digest({**a, "x": torch.arange(4).float()})  # dtype counts
    assert digest(a) != digest({**a, "z": torch.tensor(6)})


def test_grad_reduce_sees_phi_gradients_before_the_step():
    """An identity reducer changes nothing (same φ as without one); a zeroing reducer stops the step."""
    results = {}
    for name, reduce in (("none", None), ("identity", lambda grads: None),
                         ("zero", lambda grads: [g.zero_() for g in grads])):
        net, branch, batch = _setup()
        opt = torch.optim.Adam(branch.parameters(), lr=0.05)
        before = [p.detach().clone() for p in branch.parameters()]
        _step(net, branch, opt, batch, grad_reduce=reduce)
        results[name] = (before, [p.detach().clone() for p in branch.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(results["none"][1], results["identity"][1]))
    assert not all(torch.equal(a, b) for a, b in zip(*results["none"]))
    assert all(torch.equal(a, b) for a, b in zip(*results["zero"]))


def _worker(rank, world, init_file, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    replicas = Replicas(rank, world)
    net, branch, _ = _setup(seed=0)  # the same θ and φ everywhere
    _, _, batch = _setup(seed=10 + rank)  # a different meta batch on each process
    opt = torch.optim.Adam(branch.parameters(), lr=0.05)
    for _ in range(3):
        _step(net, branch, opt, batch, grad_reduce=replicas.average)
    local_only = _setup(seed=0)[1]
    opt2 = torch.optim.Adam(local_only.parameters(), lr=0.05)
    _step(net, local_only, opt2, batch)  # without averaging, the processes' φ differ
    shared = replicas.broadcast({"rank": rank, "t": torch.arange(3) * (rank + 1)})
    with open(out / f"rank{rank}.json", "w") as fh:
        json.dump({"phi": digest(branch.state_dict()), "local": digest(local_only.state_dict()),
                   "shared": [shared["rank"], shared["t"].tolist()]}, fh)
    dist.destroy_process_group()


def test_averaged_meta_steps_keep_phi_identical_on_two_gloo_processes(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), tmp_path), nprocs=2, join=True)
    zero, one = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert zero["phi"] == one["phi"]
    assert zero["local"] != one["local"]
    assert zero["shared"] == one["shared"] == [0, [0, 1, 2]]
