"""What older code wrote, read by cim_plugin.method.memory.legacy: class paths that moved (checkpoints pickle
the CIM object, its memory, branch, ...) and the CIM parts that old checkpoints kept as learner attributes."""

import io
import pickle

import torch

from cim_plugin.method import CompressedMemory, JpegMemory
from cim_plugin.method.masks import PAU
from cim_plugin.method.memory.legacy import MOVED_MODULES, LegacyUnpickler, adopt_legacy_state
from cim_plugin.pycil import checkpoint


def _memory(cls=CompressedMemory):
    memory = cls(10 ** 6)
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    memory.select_class(images, torch.randn(4, 8), torch.tensor([[2, 2, 10, 10]] * 4), 0, 10 ** 6)
    return memory


def _old_paths(data: bytes, renames) -> bytes:
    """A protocol-2 pickle (module paths as text lines, GLOBAL opcodes) as older code would have written it."""
    for new, old in renames:
        assert f"{new}\n".encode() in data
        data = data.replace(f"{new}\n".encode(), f"{old}\n".encode())
    return data


def test_every_moved_module_points_at_a_module_that_exists():
    import importlib

    for old, targets in MOVED_MODULES.items():
        for target in targets:
            importlib.import_module(target)


def test_objects_pickled_under_the_old_flat_method_paths_load():
    memory, jpeg, pau = _memory(), _memory(JpegMemory), PAU()
    data = _old_paths(pickle.dumps([memory, jpeg, pau], protocol=2), [
        ("cim_plugin.method.memory.raw", "cim_plugin.method.memory"),
        ("cim_plugin.method.memory.jpeg", "cim_plugin.method.jpeg_memory"),
        ("cim_plugin.method.masks.pau", "cim_plugin.pau")])  # from before the method/ split
    loaded, loaded_jpeg, loaded_pau = LegacyUnpickler(io.BytesIO(data)).load()
    assert type(loaded) is CompressedMemory and type(loaded_jpeg) is JpegMemory and type(loaded_pau) is PAU
    assert torch.equal(loaded.decode(range(len(memory))), memory.decode(range(len(memory))))
    assert torch.equal(loaded_jpeg.decode(range(len(jpeg))), jpeg.decode(range(len(jpeg))))


def test_a_checkpoint_naming_old_paths_loads(tmp_path):
    path = tmp_path / "checkpoint.pt"
    memory = _memory()
    buf = io.BytesIO()
    torch.save({"learner": {"memory": memory}}, buf, pickle_protocol=2, _use_new_zipfile_serialization=False)
    path.write_bytes(_old_paths(buf.getvalue(), [("cim_plugin.method.memory.raw", "cim_plugin.method.memory")]))
    loaded = checkpoint.load(path)["learner"]["memory"]
    assert type(loaded) is CompressedMemory and torch.equal(loaded.decode([0]), memory.decode([0]))


def test_checkpoint_save_and_load_round_trip(tmp_path):
    path = tmp_path / "sub" / "checkpoint.pt"
    checkpoint.save(path, {"memory": _memory(JpegMemory), "n": 3})
    loaded = checkpoint.load(path)
    assert loaded["n"] == 3 and type(loaded["memory"]) is JpegMemory
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]  # no temporary file left


def test_adopt_legacy_state_moves_the_cim_parts():
    class Holder:
        pass

    cim, attributes = Holder(), {"_cim_memory": "m", "_cim_image_bytes": 3072, "_other": 1}
    adopt_legacy_state(cim, attributes)
    assert (cim.memory, cim.image_bytes) == ("m", 3072) and attributes == {"_other": 1}
