"""Device hazards of a CUDA run (issue 31), each pinned on the CPU: the "meta" device or a device string
"cuda" on a machine without one stands in for a GPU, spies and a mocked ``torch.cuda`` stand in for what a GPU
would do. Every test name holds device, cuda, gpu, worker or tf32 (``pytest -k "device or cuda or gpu or
worker or tf32"``)."""

import json
import os
import pickle
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, requires_pycil, tiny_config
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torchvision.transforms import PILToTensor

import cim_plugin.method.codec.jpeg as jpeg_module
import cim_plugin.method.masks.pau as pau_module
import cim_plugin.method.memory.jpeg as jpeg_memory_module
import cim_plugin.method.memory.raw as memory_module
from cim_plugin.config import ConfigError
from cim_plugin.method.cim import CIM
from cim_plugin.method.data import ExemplarDataset
from cim_plugin.method.masks.cim_branch import CIMBranch
from cim_plugin.method.memory.jpeg import JpegMemory
from cim_plugin.pycil import checkpoint, distributed
from cim_plugin.pycil.host import resolve_devices
from cim_plugin.pycil.learners.der_p.pruning import output_difference_and_scale

H = W = 32
JPEG = {"exemplar_codec": "jpeg", "jpeg_quality": 70}


def _jpeg_memory(n=10, device="cpu"):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, H, W), dtype=torch.uint8, generator=g)
    boxes = torch.tensor([[4, 4, 20, 24]]).repeat(n, 1)
    boxes[0] = torch.tensor([0, 0, W, H])  # a whole-image box: no frame
    memory = JpegMemory(10**6, 4.0, quality=70)  # built on the CPU, then placed (as a restored memory is)
    memory.select_class(images, torch.randn(n, 8, generator=g), boxes, 0, 10**6)
    memory.device = device
    return memory


@pytest.fixture
def fake_gpus(monkeypatch):
    """``torch.cuda`` as on a machine with 2 GPUs (nothing that would touch a real one is called)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


# -- 1. resume keeps this process's device ----------------------------------------------------------
class _Learner:
    pass


def test_restore_keeps_the_device_of_this_process_not_the_checkpoints():
    learner = _Learner()
    learner._device, learner._multiple_gpus = torch.device("cpu"), [torch.device("cpu")]
    writer = _Learner()
    writer._device, writer._multiple_gpus, writer._cur_task = torch.device("cuda:0"), [torch.device("cuda:0")], 3
    checkpoint.restore_learner(learner, checkpoint.learner_state(writer))
    assert learner._cur_task == 3  # the run's state is restored ...
    assert learner._device == torch.device("cpu") and learner._multiple_gpus == [torch.device("cpu")]  # ... not where


class _StopAfterPhase0(Exception):
    pass


@requires_pycil
def test_resume_of_a_checkpoint_written_on_another_device_runs_here(tmp_path):
    """A CIM (JPEG) run stopped after phase 0; its checkpoint is made to say it ran on another device (the
    learner's ``_device`` and the memory's decode device, "meta"); the resumed run finishes on the CPU, with the
    uninterrupted run's numbers, and results.json and run.log say where it ran."""
    from cim_plugin.pycil.runner import prepare, run_seed

    config = prepare(tiny_config(cim=True, **JPEG))

    def stop(learner, data_manager, results):
        raise _StopAfterPhase0

    torch.set_num_threads(1)
    out = tmp_path / "resumed"
    with pytest.raises(_StopAfterPhase0):
        run_seed(config, 1993, out, on_phase=stop)
    path = out / checkpoint.CHECKPOINT
    saved = checkpoint.load(path)
    saved["learner"]["_device"] = torch.device("meta")
    saved["learner"]["_multiple_gpus"] = [torch.device("meta")]
    saved["learner"]["_cim"].memory.device = "meta"
    checkpoint.save(path, saved)
    resumed = json.loads(run_seed(config, 1993, out, resume=True).read_text())
    full = json.loads(run_seed(config, 1993, tmp_path / "full").read_text())
    assert resumed["finished"] and len(resumed["phases"]) == 3
    assert resumed["accuracy_matrix_cnn"] == full["accuracy_matrix_cnn"]
    assert {p["jpeg_decoder"] for p in resumed["phases"]} == {"libjpeg (cpu)"}  # one decoder for the whole run
    assert resumed["processes"] == {"world_size": 1, "backend": None, "devices": [["cpu"]]}
    assert "processes: world size 1, backend none (one process), devices [['cpu']]" in (out / "run.log").read_text()


# -- 2. per-item decode in forked loader workers ---------------------------------------------------
def test_worker_decodes_a_large_gpu_jpeg_memory_on_the_cpu():
    """Above the cache size ExemplarDataset decodes per item in the loader's (forked) workers: on the CPU even
    when the memory decodes on a GPU (CUDA cannot be initialised in a forked worker; here, without CUDA, a
    decode on "cuda" fails in the worker)."""
    memory = _jpeg_memory(device="cuda")
    expected = memory.decoding_on("cpu").decode(range(len(memory)))
    dataset = ExemplarDataset(memory, PILToTensor(), cache_bytes=0)
    loader = DataLoader(dataset, batch_size=3, num_workers=2, multiprocessing_context="fork")
    got = torch.cat([batch[1] for batch in loader])
    assert torch.equal(got, expected)
    assert memory.device == "cuda"  # the memory itself still decodes where it was told to


# -- 3. the memory decoded in chunks ---------------------------------------------------------------
def test_gpu_memory_decode_list_decodes_in_chunks(monkeypatch):
    memory = _jpeg_memory(n=10)
    whole = memory.decode(range(10))
    sizes = []
    real = memory.decode
    monkeypatch.setattr(memory, "decode", lambda idx: sizes.append(len(idx)) or real(idx))
    monkeypatch.setattr(memory_module, "DECODE_CHUNK", 4)
    out = memory.decode_list()
    assert sizes == [4, 4, 2]
    assert torch.equal(torch.stack(out), whole)


# -- 4 and 6. one JPEG decoder per run, whatever the device, also after a restore --------------------
def test_cim_on_a_gpu_device_decodes_jpeg_on_the_cpu_also_after_a_restore():
    cim = CIM(JPEG, device=torch.device("meta"))  # "meta": the run's device, a GPU
    assert CIM.decode_device == "cpu"
    cim.memory = _jpeg_memory(device="cuda:0")  # a checkpoint written by a run that decoded on its GPU
    restored = pickle.loads(pickle.dumps(cim))
    assert restored.memory.device == "cuda:0"
    restored.start_phase(1, 5, 10, 20, device=torch.device("meta"))
    assert restored.memory.device == "cpu" and restored.memory.decoder == "libjpeg (cpu)"
    assert torch.equal(restored.memory.decode(range(3)), _jpeg_memory().decode(range(3)))
    other = CIM(JPEG, device=torch.device("meta"))
    other.load_state_dict(cim.state_dict())
    assert other.memory.device == "cpu"


# -- 5. der_p's pruning check without TF32 ---------------------------------------------------------
class _FlagSpy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.seen = []

    def forward(self, x):
        self.seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        return self.conv(x)


def test_tf32_is_off_while_the_pruned_extractor_is_compared():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True  # Ampere's default for convs
    try:
        spy = _FlagSpy()
        diff, _ = output_difference_and_scale(spy, spy, (2, 3, 8, 8))
        assert diff == 0.0 and spy.seen and set(spy.seen) == {(False, False)}
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32  # restored
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# -- 7. GPU JPEG decode: one call, synchronised ----------------------------------------------------
def test_gpu_jpeg_decode_is_synchronised_before_its_images_are_used(monkeypatch):
    streams = jpeg_module.encode_streams([torch.zeros(3, 8, 8, dtype=torch.uint8)] * 2, 80)
    events = []
    real = jpeg_module.decode_jpeg

    def fake_gpu_decode(data, mode, device="cpu"):
        events.append(("decode", str(device)))
        return real(data, mode=mode)

    monkeypatch.setattr(jpeg_module, "decode_jpeg", fake_gpu_decode)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append(("sync", str(device))))
    out = jpeg_module.decode_streams(streams, "cuda:0")
    assert len(out) == 2 and events == [("decode", "cuda:0"), ("sync", "cuda:0")]


def test_gpu_jpeg_memory_decodes_frames_and_crops_in_one_decoder_call(monkeypatch):
    memory = _jpeg_memory(n=6)
    expected = memory.decode(range(6))
    calls = []
    real = jpeg_memory_module.decode_streams
    monkeypatch.setattr(jpeg_memory_module, "decode_streams", lambda s, d: calls.append(len(s)) or real(s, d))
    assert torch.equal(memory.decode(range(6)), expected)
    assert calls == [11]  # 5 frames (one whole-image box) and 6 crops


# -- 8. PAU's graph-free forward in blocks on a GPU ------------------------------------------------
def test_pau_forward_without_graph_on_a_gpu_device_runs_in_blocks(monkeypatch):
    """Large graph-free activations go in blocks on every device ("meta" stands in for a GPU): on a GPU each of
    the ~20 elementwise passes would otherwise allocate a temporary of the whole activation."""
    big = torch.empty(3 * pau_module.GPU_BLOCK + 5, device="meta")
    assert pau_module._takes_blocks(big, graph=False)
    assert not pau_module._takes_blocks(big, graph=True)
    assert not pau_module._takes_blocks(torch.empty(pau_module.GPU_BLOCK, device="meta"), graph=False)
    sizes = []
    real = pau_module._activate
    monkeypatch.setattr(pau_module, "_activate", lambda x, *a, **k: sizes.append(x.numel()) or real(x, *a, **k))
    a, b = (c.to("meta") for c in pau_module.PAU().coefficients(torch.device("cpu"), torch.float32))
    low = high = torch.ones((), device="meta")
    with torch.no_grad():
        y = pau_module._activate_blocked(big, a.detach(), b.detach(), low, high)
    assert y.shape == big.shape and sizes == [pau_module.GPU_BLOCK] * 3 + [5]


# -- 9. smaller ------------------------------------------------------------------------------------
def test_cuda_rng_states_are_restored_for_the_gpus_present(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: pytest.fail("one state per saved GPU"))
    restored = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((state, device)))
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
             "cuda": ["gpu0", "gpu1"]}  # written on a node with 2 GPUs
    checkpoint.restore_rng(state)
    assert restored == [("gpu0", 0)]
    assert "random states of 2 GPU(s), this machine has 1" in caplog.text


def test_one_gpu_per_process_launcher_gives_local_rank_1_cuda_0(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")  # the launcher gave this process GPU 3 alone
    assert distributed.process_gpu(rank=1, local=1) == 0
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")  # a node with one GPU, torchrun asked for 2 processes
    with pytest.raises(ConfigError, match="LOCAL_RANK 1 but sees 1 GPU"):
        distributed.process_gpu(rank=1, local=1)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert distributed.process_gpu(rank=5, local=2) == 2


class _FakeDDP(DistributedDataParallel):
    def __init__(self, module):  # no process group needed: only the type matters
        nn.Module.__init__(self)
        self.module = module


def test_cim_branch_refuses_a_ddp_wrapped_network_on_any_device():
    from cim_plugin.method.masks.bilevel import meta_step

    net = _FakeDDP(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))
    x = torch.zeros(1, 3, 8, 8)
    with pytest.raises(TypeError, match="DistributedDataParallel.*net.module"):
        CIMBranch()(net, x)
    with pytest.raises(TypeError, match="not _FakeDDP"):
        meta_step(network=net, branch=CIMBranch(), phi_optimizer=None, x_inner=x, y_inner=None,
                  x_inner_degraded=x, x_outer=x, y_outer=None, mask_fn=None, logits_fn=None, lr=0.1,
                  lr_ratio=0.1, div_coef=0.0, reg_coef=0.0, max_phi_grad_norm=None)


def test_a_device_list_mixing_cpu_and_gpus_is_refused(fake_gpus):
    with pytest.raises(ConfigError, match="mixes the CPU and GPUs"):
        resolve_devices(["cpu", "0"])
    with pytest.raises(ConfigError, match="names a GPU twice"):
        resolve_devices(["0", "cuda:0"])
    assert resolve_devices(["0", "1"]) == [torch.device("cuda:0"), torch.device("cuda:1")]


def test_cuda_resume_caveat_is_said_where_resume_is_claimed():
    """Bilinear interpolate's CUDA backward is non-deterministic: "resume gives the uninterrupted numbers" is
    claimed bit for bit for the CPU only, in the checkpoint module, the README and docs/distributed.md."""
    doc = " ".join(checkpoint.__doc__.split())
    assert "on CUDA only up to the GPU's non-deterministic kernels" in doc and "interpolate" in doc
    for page in ("README.md", "docs/distributed.md"):
        text = " ".join((REPO / page).read_text().split())
        assert "benchmarks/gpu_check.sh" in text and "non-deterministic" in text, page


@requires_pycil
def test_lucir_refuses_several_gpu_devices():
    from cim_plugin.pycil.learners.lucir.learner import LUCIR

    with pytest.raises(ConfigError, match="lucir runs on one device"):
        LUCIR({"device": [torch.device("cuda:0"), torch.device("cuda:1")]})


# -- gpu_check.sh ----------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_check_without_cuda_exits_2_with_one_line():
    env = dict(os.environ, GPU_CHECK_PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh")], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 2
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1 and "CUDA" in lines[0] and "Traceback" not in proc.stderr
