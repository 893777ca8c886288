"""torchrun: one process per device, PyCIL's learner under DistributedDataParallel, nothing of PyCIL edited.

``torchrun --nproc_per_node=N exps/run.py CONFIG`` sets WORLD_SIZE, RANK and LOCAL_RANK; :func:`setup`
(called once by the runner, after the config is checked) joins the process group: nccl with one GPU per
process (``cuda:LOCAL_RANK``) when the config asks for a GPU, gloo on the CPU otherwise. Without
WORLD_SIZE > 1 every function here is a no-op and a run is the one-process run, bit for bit.

How PyCIL is adapted, from outside (:meth:`Context.patched`, :meth:`Context.attach`):

- **DDP only while training.** PyCIL's learners wrap their network in ``nn.DataParallel(net, devices)``
  when ``len(self._multiple_gpus) > 1`` and take ``.module`` back afterwards (FOSTER's student too),
  using ``.module`` for attribute access in between. Under torchrun ``_multiple_gpus`` holds the process's
  device once per process and the name ``nn`` in the learner's modules reads :class:`DistributedNetwork`
  for ``DataParallel``: PyCIL's own hooks wrap and unwrap the network, in DDP, at the points it chose.
  ``find_unused_parameters=True``: DER's and FOSTER's frozen old extractors and heads get no gradient.
  Forwards without autograd (evaluation inside training, FOSTER's teacher) bypass DDP.
- **Training loaders** (``DataLoader(..., shuffle=True)`` in the learner's module) get a
  DistributedSampler; its epoch advances at each pass (:class:`EpochShardedLoader`). The global batch
  is the config's ``batch_size``: each process takes ``batch_size // world`` (a batch size that does not
  divide is refused). DDP averages gradients, so a step sees the mean loss over the global batch.
- **Evaluation** (``_eval_cnn``, ``_eval_nme``): each process evaluates a contiguous block of the test set;
  predictions are gathered in order, so every process (and results.json) sees the whole test set.
- **Memory.** Before it is built, BatchNorm running statistics are taken from process 0; every process then
  builds it from identical inputs (CIM's generator has the same seed everywhere) and process 0's copy is
  broadcast (CIM: the memory's ``state_dict``; baseline: the exemplar arrays; and the class means), so it
  is identical on every process; a process whose own build differed says so in a warning.
- **CIM** gets a :class:`~cim_plugin.method.replicas.Replicas`: meta batches are shared out and φ's
  gradients averaged, so φ stays identical.
- **Writes.** Process 0 alone writes results.json, checkpoints, memory files and run.log
  (:meth:`Context.from_writer` shares its decisions, e.g. the output folder and the checkpoint it read).

Debugging (tests): with ``CIM_DDP_DEBUG_DIR`` every process writes ``rank<R>.json`` there (digests of the
network, memory and φ after each phase); ``CIM_DDP_FAIL=R:P`` makes process R raise at the start of phase P
(``R:P:kill``: SIGKILL itself).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import signal
import sys
import types
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from ..config import ConfigError
from ..io import write_json
from ..method.memory import memory_from_state
from ..method.replicas import Replicas, digest
from .constants import learner_modules, module_constants, overridden
from .host import learner_class
from .learners import DDP_LEARNERS
from .network import unwrap

log = logging.getLogger("cim_plugin")

DEBUG_DIR_ENV, FAIL_ENV, TIMEOUT_ENV = "CIM_DDP_DEBUG_DIR", "CIM_DDP_FAIL", "CIM_DDP_TIMEOUT_S"
RESUME_HINT = ("process 0 writes results.json and checkpoint.pt atomically after every finished phase, so the "
               "run folder holds the last finished phase intact; rerun the same command with --resume --out DIR")


def launched() -> bool:
    """Started by torchrun with more than one process?"""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def speaks() -> bool:
    """Does this process print messages shared by all processes (process 0, or the only process)?"""
    return int(os.environ.get("RANK", "0")) == 0


class DistributedNetwork(DistributedDataParallel):
    """What PyCIL's ``nn.DataParallel(network, devices)`` builds under torchrun: DDP over this process's
    device, with ``find_unused_parameters`` (frozen old extractors and heads get no gradient). A forward
    without autograd runs the module directly (no DDP bookkeeping, no collective)."""

    def __init__(self, module, device_ids=None, output_device=None, dim=0):
        device = current().device
        module.to(device)
        super().__init__(module, device_ids=[device.index] if device.type == "cuda" else None,
                         find_unused_parameters=True)

    def forward(self, *args, **kwargs):
        if not torch.is_grad_enabled():
            return self.module(*args, **kwargs)
        return super().forward(*args, **kwargs)


class _TorchNN(types.ModuleType):
    """``torch.nn`` as a learner module sees it under torchrun: ``DataParallel`` is :class:`DistributedNetwork`."""

    DataParallel = DistributedNetwork

    def __getattr__(self, name):
        return getattr(torch.nn, name)


class EpochShardedLoader(DataLoader):
    """A training DataLoader over this process's DistributedSampler shard; every pass over it (an epoch)
    calls ``sampler.set_epoch`` with the pass number, so each epoch is a new shuffle, the same on every
    process."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.passes = 0

    def __iter__(self):
        self.sampler.set_epoch(self.passes)
        self.passes += 1
        return super().__iter__()


class Context:
    """This process's place in the job (world 1 outside torchrun: every method does what one process does)."""

    def __init__(self, rank: int = 0, world: int = 1, device: Optional[torch.device] = None,
                 backend: Optional[str] = None):
        self.rank, self.world, self.device = rank, world, device or torch.device("cpu")
        self.backend = backend  # the process group's ("nccl", "gloo"); None in one process
        self.replicas = Replicas(rank, world) if world > 1 else None
        self.seed_fn: Callable[[], int] = lambda: 0
        self.debug: Dict[str, Any] = {}

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_writer(self) -> bool:
        """Process 0 writes the run's files."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def from_writer(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` run by process 0 and its result (or ConfigError) shared with every process."""
        if not self.active:
            return fn()
        result = error = None
        if self.is_writer:
            try:
                result = fn()
            except ConfigError as err:
                error = str(err)
        result, error = self.replicas.broadcast((result, error))
        if error is not None:
            raise ConfigError(error)
        return result

    def processes(self, devices: List[Any]) -> Dict[str, Any]:
        """Where the run ran, for results.json and run.log: ``world_size``, ``backend`` (None in one process)
        and ``devices``, each process's device list in rank order (gathered under torchrun; in one process
        the config's devices, several for DataParallel)."""
        own = [str(d) for d in devices]
        if self.active:
            every: List[Any] = [None] * self.world
            dist.all_gather_object(every, own)
        else:
            every = [own]
        return {"world_size": self.world, "backend": self.backend, "devices": every}

    def rng_states(self, own: Dict[str, Any]) -> Dict[str, Any]:
        """The checkpoint's random states: ``{"rng": own}``, and under torchrun ``"rng_ranks"``, every
        process's (gathered), so that a resumed job continues each process's streams."""
        if not self.active:
            return {"rng": own}
        ranks: List[Any] = [None] * self.world
        dist.all_gather_object(ranks, own)
        return {"rng": own, "rng_ranks": ranks}

    def own_rng(self, saved: Dict[str, Any]) -> Dict[str, Any]:
        """This process's random states in a checkpoint (process 0's when it was written by another world)."""
        ranks = saved.get("rng_ranks")
        return ranks[self.rank] if self.active and ranks is not None and len(ranks) == self.world else saved["rng"]

    # -- PyCIL's module-level names, for the run ----------------------------------------------
    @contextlib.contextmanager
    def patched(self, model_name: str) -> Iterator[None]:
        """``nn`` (DataParallel -> DDP) and ``DataLoader`` (training loaders sharded) in the learner's modules."""
        if not self.active:
            yield
            return
        classes = learner_class(model_name).__mro__
        modules = [sys.modules[k.__module__] for k in classes if k.__module__.startswith(("models.", "cim_plugin."))]
        with contextlib.ExitStack() as stack:
            for module in dict.fromkeys(modules):
                values = {}
                if getattr(module, "nn", None) is torch.nn:
                    values["nn"] = _TorchNN("torch.nn")
                if getattr(module, "DataLoader", None) is DataLoader:
                    values["DataLoader"] = self.loader
                stack.enter_context(overridden(module, values))
            yield

    def loader(self, dataset, batch_size: int = 1, shuffle: Optional[bool] = None, **kwargs) -> DataLoader:
        """PyCIL's ``DataLoader(...)`` call: a shuffled (training) loader becomes this process's share of the
        global batch over a DistributedSampler; any other loader is left as it is."""
        if not shuffle:
            return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, **kwargs)
        sampler = DistributedSampler(dataset, num_replicas=self.world, rank=self.rank, shuffle=True,
                                     seed=self.seed_fn())
        return EpochShardedLoader(dataset, batch_size=local_batch(batch_size, self.world), sampler=sampler, **kwargs)

    # -- the learner --------------------------------------------------------------------------
    def attach(self, learner, args: Dict[str, Any]) -> None:
        """Adapt a built (or resumed) learner to this process's place in the job."""
        learner._multiple_gpus = args["device"]  # what BaseLearner set (a resumed checkpoint may hold another)
        if not self.active:
            return
        learner._multiple_gpus = [self.device] * self.world  # PyCIL's "several devices" branch: DDP while training
        seed = int(args["seed"])
        self.seed_fn = lambda: seed * 1000 + max(0, int(learner._cur_task))
        cim = getattr(learner, "_cim", None)
        if cim is not None:
            cim.replica = self.replicas
        _around(learner, "incremental_train", before=lambda *a: self._maybe_fail(learner))
        _around(learner, "build_rehearsal_memory", before=lambda *a: self.sync_buffers(learner._network),
                after=lambda *a: self.sync_memory(learner))
        _around(learner, "after_task", after=lambda *a: self.record(learner))
        if hasattr(learner, "_cim_on_epoch"):  # meta steps and box refreshes see process 0's BN statistics
            _around(learner, "_cim_on_epoch", before=lambda *a: self.sync_buffers(learner._network))
        for name in ("_eval_cnn", "_eval_nme"):
            original = getattr(learner, name)
            setattr(learner, name, lambda loader, *rest, _f=original: self.gathered(_f, loader, *rest))

    def sync_buffers(self, network) -> None:
        """BatchNorm running statistics (every buffer) of process 0, on every process."""
        self.replicas.broadcast_tensors(list(unwrap(network).buffers()))

    def gathered(self, evaluate: Callable, loader: DataLoader, *rest):
        """``evaluate(shard loader, *rest) -> (y_pred (n, k), y_true (n,))`` on this process's contiguous block
        of ``loader.dataset``; returns the whole test set's arrays, in the dataset's order."""
        n = len(loader.dataset)
        if n < self.world:
            return evaluate(loader, *rest)
        lo, hi = n * self.rank // self.world, n * (self.rank + 1) // self.world
        shard = DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=range(lo, hi),
                           num_workers=loader.num_workers)
        parts: List[Any] = [None] * self.world
        dist.all_gather_object(parts, evaluate(shard, *rest))
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def sync_memory(self, learner) -> None:
        """Process 0's memory (and class means) on every process; digests kept for the debug file."""
        cim = getattr(learner, "_cim", None)
        if cim is not None:
            local = {"memory": cim.memory.state_dict(), "sources": cim.sources, "cams": cim.cams}
        else:
            local = {"data": learner._data_memory, "targets": learner._targets_memory}
        local["class_means"] = getattr(learner, "_class_means", None)
        own = digest(local)
        shared = self.replicas.broadcast(local if self.is_writer else None)
        self.debug.update(memory_local=own, memory=digest(shared))
        if self.is_writer:
            return
        if self.debug["memory"] != own:
            log.warning("process %d built a memory that differs from process 0's (non-deterministic kernels?); "
                        "process 0's is used on every process", self.rank)
        if cim is not None:
            cim.memory = memory_from_state(shared["memory"], cim.decode_device)
            cim.sources, cim.cams = shared["sources"], shared["cams"]
        else:
            learner._data_memory, learner._targets_memory = shared["data"], shared["targets"]
        if shared["class_means"] is not None:
            learner._class_means = shared["class_means"]

    def _maybe_fail(self, learner) -> None:
        """``CIM_DDP_FAIL=R:P`` (raise) or ``R:P:kill`` (SIGKILL, as the kernel's OOM killer would): process R
        fails at the start of phase P (tests)."""
        spec = os.environ.get(FAIL_ENV, "")
        parts = spec.split(":")
        if len(parts) >= 2 and [int(v) for v in parts[:2]] == [self.rank, learner._cur_task + 1]:
            if parts[2:] == ["kill"]:
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"{FAIL_ENV}={spec}: process {self.rank} fails at the start of phase "
                               f"{learner._cur_task + 1} (test)")

    def record(self, learner) -> None:
        """With CIM_DDP_DEBUG_DIR: append this phase's digests to <dir>/rank<R>.json."""
        folder = os.environ.get(DEBUG_DIR_ENV)
        if not folder:
            return
        cim = getattr(learner, "_cim", None)
        branch = None if cim is None else cim.branch
        entry = {"phase": int(learner._cur_task), "network": digest(unwrap(learner._network).state_dict()),
                 "phi": None if branch is None else digest(branch.state_dict()), **self.debug}
        path = Path(folder) / f"rank{self.rank}.json"
        entries = json.loads(path.read_text()) if path.exists() else []
        write_json(path, entries + [entry])


def _around(obj, name: str, before: Optional[Callable] = None, after: Optional[Callable] = None) -> None:
    """Replace the bound method ``obj.name`` by one that calls ``before(*args)``, the method, ``after(*args)``."""
    original = getattr(obj, name)

    def method(*args, **kwargs):
        if before is not None:
            before(*args)
        result = original(*args, **kwargs)
        if after is not None:
            after(*args)
        return result

    setattr(obj, name, method)


def local_batch(batch_size: int, world: int) -> int:
    """Each process's share of the global batch; ConfigError when it does not divide."""
    if batch_size % world:
        raise ConfigError(f'"batch_size" {batch_size} does not split over {world} processes (each takes '
                          f"batch_size // {world}); use a multiple of {world}, or another --nproc_per_node")
    return batch_size // world


def _batch_size(config: Dict[str, Any]) -> Optional[int]:
    """The training batch size a run will use: the config's key, else the learner module's constant."""
    if isinstance(config.get("batch_size"), int):
        return config["batch_size"]
    for module in learner_modules(learner_class(config["model_name"])):
        value = module_constants(module).get("batch_size")
        if isinstance(value, int):
            return value
    return None


_CONTEXT = Context()


def current() -> Context:
    return _CONTEXT


def setup(config: Dict[str, Any]) -> Context:
    """Under torchrun: check the config, join the process group, set ``config["_devices"]`` to this process's
    one device. Otherwise nothing (the one-process context)."""
    global _CONTEXT
    if not launched():
        _CONTEXT = Context()
        return _CONTEXT
    world, rank, local = (int(os.environ[k]) for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"))
    name = config["model_name"].lower()
    if name not in DDP_LEARNERS:
        raise ConfigError(f'learner "{name}" is not supported under torchrun (supported: {", ".join(DDP_LEARNERS)}); '
                          f"run it in one process: python exps/run.py CONFIG")
    batch = _batch_size(config)
    if batch is not None:
        local_batch(batch, world)
    if config["_devices"][0].type == "cuda":
        device, backend = torch.device("cuda", process_gpu(rank, local)), "nccl"
        torch.cuda.set_device(device)
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, 1800)))
        dist.init_process_group(backend, timeout=timeout)
    config["_devices"] = [device]
    _CONTEXT = Context(rank, world, device, backend)
    return _CONTEXT


def process_gpu(rank: int, local: int) -> int:
    """This process's GPU index: ``LOCAL_RANK`` among the GPUs it sees, or 0 when a launcher gives each
    process one GPU of its own (``CUDA_VISIBLE_DEVICES`` set per process, e.g. Slurm's GPU binding), whatever
    its LOCAL_RANK. ConfigError when LOCAL_RANK names a GPU this process cannot see."""
    count = torch.cuda.device_count()
    if local < count:
        return local
    if count == 1 and os.environ.get("CUDA_VISIBLE_DEVICES", "").strip():
        return 0
    raise ConfigError(f"process {rank} has LOCAL_RANK {local} but sees {count} GPU(s) "
                      f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); give torchrun "
                      f"--nproc_per_node at most {count}, or give each process one GPU of its own")


def shutdown() -> None:
    """Leave the process group (if this process joined one)."""
    global _CONTEXT
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _CONTEXT = Context()


def failure_message(err: BaseException) -> str:
    """What a process prints when it stops under torchrun: which process, why, and what is on disk."""
    rank, world = os.environ.get("RANK", "?"), os.environ.get("WORLD_SIZE", "?")
    text = f"{type(err).__name__}: {err}".strip()
    lost = isinstance(err, getattr(dist, "DistBackendError", ())) or any(
        s in str(err) for s in ("Connection closed", "Connection reset", "Broken pipe", "timed out", "Timed out"))
    why = ("it lost contact with another process of the job, which failed or was killed (its own message, or "
           "torchrun's summary of the exit codes, says which and why)" if lost else "it failed")
    return f"error: process {rank} of {world} stopped: {why}.\n  {text[:2000]}\n  {RESUME_HINT}"
