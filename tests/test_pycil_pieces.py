"""The PyCIL-facing pieces of CIM: CAMs of PyCIL's networks, the image pipeline, learner checks."""

import numpy as np
import pytest
import torch
from conftest import requires_pycil, tiny_config
from PIL import Image


@pytest.fixture(scope="module")
def pycil():
    from cim_plugin.pycil import import_pycil

    import_pycil()
    import utils.inc_net as inc_net

    return inc_net


def _dernet(inc_net, phases=2, classes=3):
    torch.manual_seed(0)
    net = inc_net.DERNet({"convnet_type": "resnet32"}, False)
    for k in range(1, phases + 1):
        net.update_fc(classes * k)
    return net.eval()


@requires_pycil
def test_dernet_cam_is_the_sum_of_per_backbone_cams(pycil):
    from cim_plugin.method.masks.cam import cam_from_feature_maps, minmax_normalize
    from cim_plugin.pycil.network import fmaps_and_features

    net = _dernet(pycil)
    x = torch.randn(4, 3, 32, 32)
    y = torch.tensor([0, 2, 4, 5])
    with torch.no_grad():
        fmaps, features, weight = fmaps_and_features(net, x)
        assert len(fmaps) == 2 and weight.shape == (6, 128)
        assert torch.allclose(features, net.extract_vector(x))
        cam = cam_from_feature_maps(fmaps, weight, y, out_size=(32, 32))
        # by hand: each backbone's own map with its slice of the class row, summed
        raw = sum(
            torch.einsum("bc,bchw->bhw", weight[y, 64 * k : 64 * (k + 1)], net.convnets[k](x)["fmaps"][-1])
            for k in range(2)
        )
        raw = torch.nn.functional.interpolate(raw[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    assert torch.allclose(cam, minmax_normalize(raw), atol=1e-5)
    assert cam.shape == (4, 32, 32) and float(cam.min()) >= 0 and float(cam.max()) <= 1


@requires_pycil
def test_fmap_view_gives_the_networks_logits(pycil):
    from cim_plugin.pycil.network import FmapView

    net = _dernet(pycil)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(FmapView(net)(x)["logits"], net(x)["logits"], atol=1e-6)


@requires_pycil
def test_cim_branch_grows_with_a_new_backbone(pycil):
    from cim_plugin.method.masks.cim_branch import CIMBranch
    from cim_plugin.pycil.network import FmapView

    x = torch.randn(2, 3, 32, 32)
    branch = CIMBranch()
    one = branch.ensure_sites(FmapView(_dernet(pycil, phases=1)), x)
    two = branch.ensure_sites(FmapView(_dernet(pycil, phases=2)), x)
    assert one == 31 and two == 62  # resnet32 has 31 ReLU call sites per backbone


def test_pipeline_batched_input_equals_pycil_test_transform():
    from torchvision import transforms

    from cim_plugin.pycil.data import ImagePipeline

    class DM:
        use_path = False
        _train_trsf = [transforms.RandomCrop(16, padding=2), transforms.ToTensor()]
        _test_trsf = [transforms.ToTensor()]
        _common_trsf = [transforms.Normalize((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))]

    pipe = ImagePipeline(DM)
    images = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    stored = pipe.load_many(images)
    assert stored.dtype == torch.uint8 and stored.shape == (5, 3, 16, 16)
    reference = torch.stack([transforms.Compose(DM._test_trsf + DM._common_trsf)(Image.fromarray(i)) for i in images])
    assert torch.allclose(pipe.to_input(stored, "cpu"), reference, atol=1e-6)


@requires_pycil
def test_learners_without_memory_are_detected(pycil):
    from cim_plugin.pycil import learner_class
    from cim_plugin.pycil.mixin import keeps_memory

    assert keeps_memory(learner_class("icarl")) and keeps_memory(learner_class("der"))
    assert keeps_memory(learner_class("foster"))
    assert not keeps_memory(learner_class("lwf")) and not keeps_memory(learner_class("finetune"))


def test_compression_augmentation_replaces_images_by_their_compressed_version():
    from torchvision import transforms

    from cim_plugin.method.codec.raw import compress
    from cim_plugin.method.data import CompressAugmentDataset
    from cim_plugin.pycil.data import ImagePipeline

    class DM:
        use_path = False
        _train_trsf = []
        _test_trsf = [transforms.ToTensor()]
        _common_trsf = []

    class Base(torch.utils.data.Dataset):
        def __init__(self, images):
            self.images, self.labels = images, np.zeros(len(images), dtype=np.int64)
            self.trsf = transforms.ToTensor()

        def __len__(self):
            return len(self.images)

        def __getitem__(self, i):
            return i, self.trsf(Image.fromarray(self.images[i])), self.labels[i]

    images = np.random.default_rng(1).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    data = CompressAugmentDataset(Base(images), ImagePipeline(DM), compress_ratio=4.0)
    assert torch.equal(data[0][1], Base(images)[0][1])  # no boxes yet: untouched
    data.boxes = torch.tensor([[4, 4, 10, 10]] * 3)
    data.prob = 1.0
    expected = compress(torch.from_numpy(images[1]).permute(2, 0, 1)[None], data.boxes[1:2], 4.0)[0]
    assert torch.equal((data[1][1] * 255).round().to(torch.uint8), expected)
    assert not torch.equal(data[1][1], Base(images)[1][1])


def test_unusable_learned_cams_fall_back_to_the_cil_models_cams_only_where_needed():
    """Box refresh skips the CIL forward unless a learned CAM is constant or non-finite; then only those
    images take the CIL model's CAM (and boxes equal those of the mixed CAMs)."""
    from types import SimpleNamespace

    from cim_plugin.method.cim import CIM
    from cim_plugin.method.masks.boxes import cam_to_boxes

    torch.manual_seed(0)
    n, H, W = 6, 16, 16
    learned = torch.rand(n, H, W)
    learned[1] = 0.5  # constant: no location
    learned[4, 0, 0] = float("nan")
    cil = torch.rand(n, H, W)
    forwarded = []

    def forward_chunks(network, images, labels):
        forwarded.append(len(images))
        idx = images[:, 0, 0, 0].long()  # image i carries its index in pixel (0, 0, 0)
        return torch.zeros(len(images), 8), cil[idx]

    fake = SimpleNamespace(
        config={"cim_mask": "cim", "mask_threshold": 0.6}, branch=object(),
        _branch_cams=lambda network, images, labels: learned.clone(), _forward_chunks=forward_chunks,
        generator=torch.Generator().manual_seed(0),
    )
    images = torch.zeros(n, 3, H, W, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    labels = torch.zeros(n, dtype=torch.long)
    features, boxes = CIM._features_and_boxes(fake, None, images, labels, need_features=False)
    assert features is None and forwarded == [2]  # only the two unusable images went through the CIL net
    expected = learned.nan_to_num(0.0)
    expected[[1, 4]] = cil[[1, 4]]
    assert torch.equal(fake.last_cams, expected)
    assert torch.equal(boxes, cam_to_boxes(expected, 0.6))
    forwarded.clear()
    features, boxes_all = CIM._features_and_boxes(fake, None, images, labels)  # memory build: features needed
    assert forwarded == [n] and features.shape == (n, 8) and torch.equal(boxes_all, boxes)


def test_exemplar_dataset_decodes_once_and_gives_the_per_item_images():
    """The once-per-phase batched decode must give exactly the per-item decode (mixed image sizes too)."""
    from torchvision import transforms

    from cim_plugin.method.data import ExemplarDataset
    from cim_plugin.method.masks.boxes import random_boxes
    from cim_plugin.method.memory import CompressedMemory

    g = torch.Generator().manual_seed(0)
    memory = CompressedMemory(10**7, 4.0)
    for label, (H, W) in enumerate([(32, 32), (40, 24)]):
        images = torch.randint(0, 256, (6, 3, H, W), dtype=torch.uint8, generator=g)
        memory.select_class(images, torch.randn(6, 8, generator=g), random_boxes(6, H, W, 0.3, generator=g),
                            label, 10**6)
    to_tensor = transforms.PILToTensor()
    cached = ExemplarDataset(memory, to_tensor)
    per_item = ExemplarDataset(memory, to_tensor, cache_bytes=0)
    assert cached._decoded is not None and per_item._decoded is None
    assert len(cached) == len(memory) == 12
    for i in range(len(memory)):
        ci, img, label = cached[i]
        assert ci == i and label == int(memory.labels[i])
        assert torch.equal(img, per_item[i][1]) and torch.equal(img, memory.decode_one(i))


def test_foster_compression_epochs_run_no_cim_work():
    """As in the official code, FOSTER's compression epochs get no meta steps and no box refreshes: the
    per-epoch hook neither works nor advances CIM's epoch counter there (and works again afterwards)."""
    from types import SimpleNamespace

    from cim_plugin.config import CIM_DEFAULTS
    from cim_plugin.pycil.mixin import CIMMixin

    class Host:  # stands in for a PyCIL learner with a compression stage
        def __init__(self, args):
            self.args = args
            self._cur_task = 0
            self._network = torch.nn.Identity()

        def _feature_compression(self, epochs):
            for _ in range(epochs):
                self._cim_on_epoch()
            return "distilled"

    learner = type("CIMHost", (CIMMixin, Host), {})({**CIM_DEFAULTS, "seed": 0})
    cim = learner._cim
    worked = []
    cim._meta_steps = lambda network, dataset, lr: worked.append(dataset)
    cim.train_new = SimpleNamespace(salt=None)  # the phase's new-class data (only its pass counter is read)
    learner._cim_on_epoch()  # epoch 0: nothing yet
    learner._cim_on_epoch()  # epoch 1: meta steps
    assert cim.epoch == 2 and len(worked) == 1 and cim.train_new.salt == 1
    assert learner._feature_compression(3) == "distilled"
    assert cim.epoch == 2 and len(worked) == 1 and not learner._cim_paused
    learner._cim_on_epoch()
    assert cim.epoch == 3 and len(worked) == 2


def test_a_checkpoint_from_before_the_cim_object_resumes_into_it():
    """Checkpoints restore learner attributes; those written before CIM became one object hold its parts
    as `_cim_*` attributes, which the next phase hands to the CIM object."""
    from cim_plugin.config import CIM_DEFAULTS
    from cim_plugin.method.memory import CompressedMemory
    from cim_plugin.pycil.mixin import CIMMixin

    class Host:
        def __init__(self, args):
            self.args = args

    learner = type("CIMHost", (CIMMixin, Host), {})({**CIM_DEFAULTS, "seed": 0})
    memory, generator = CompressedMemory(100), torch.Generator().manual_seed(5)
    learner.__dict__.update(_cim_memory=memory, _cim_branch_task=3, _cim_generator=generator,
                            _cim_image_bytes=12, _cim_sources={0: torch.arange(2)}, _cim_cams={})
    learner._cim_adopt_legacy_state()
    cim = learner._cim
    assert cim.memory is memory and cim.branch_task == 3 and cim.generator is generator and cim.image_bytes == 12
    assert list(cim.sources) == [0] and not any(k.startswith("_cim_memory") for k in vars(learner))


@pytest.mark.parametrize("name", ["simplecil", "aper_finetune", "coil", "beefiso"])
def test_learners_that_call_cuda_are_refused_on_the_cpu_with_the_reason(name):
    """PyCIL's bare .cuda() calls would stop these learners mid-run on a CPU: refused before any data, with
    the line that needs the GPU; the same learner on a GPU device list passes this check."""
    from cim_plugin.config import ConfigError
    from cim_plugin.pycil.host import NEEDS_CUDA, check_runnable

    with pytest.raises(ConfigError, match=r'needs a CUDA GPU.*"device": \["0"\]') as err:
        check_runnable(name, (32, 32), ["cpu"])
    assert NEEDS_CUDA[name] in str(err.value)
    check_runnable(name, (32, 32), ["cuda:0"])
    check_runnable(name, (32, 32), None)


@requires_pycil
def test_a_cpu_run_of_simplecil_stops_before_training():
    from cim_plugin.config import ConfigError
    from cim_plugin.pycil.host import patched

    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        with patched(tiny_config(model_name="simplecil")):
            pass
