"""CIM on PyCIL's learners that keep a memory: each one runs (see test_cim_datasets / test_lucir) or is
refused with the specific reason it cannot work."""

import pytest

from conftest import requires_pycil, tiny_config

from cim_plugin.pycil.support import REFUSED, SUPPORTED


@requires_pycil
@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_learners_say_why_before_training(name):
    """prepare() refuses the config (before the learner is imported: COIL needs the POT package)."""
    from cim_plugin.config import ConfigError
    from cim_plugin.pycil.runner import prepare

    with pytest.raises(ConfigError) as err:
        prepare(tiny_config(model_name=name, cim=True))
    message = str(err.value)
    assert REFUSED[name] in message and "supported: " in message


@requires_pycil
@pytest.mark.parametrize("name", ["bic", "podnet", "rmm-icarl"])
def test_the_mixin_refuses_them_too(name):
    from cim_plugin.config import ConfigError
    from cim_plugin.pycil.host import learner_class
    from cim_plugin.pycil.mixin import cim_learner_class

    with pytest.raises(ConfigError, match="cannot run on"):
        cim_learner_class(learner_class(name), {"model_name": name})


def test_every_memory_learner_of_pycil_is_either_supported_or_refused():
    from cim_plugin.pycil.host import LEARNERS, PLUGIN_LEARNERS

    memory_learners = {"icarl", "der", "foster", "wa", "replay", "bic", "podnet", "coil", "memo", "gem",
                       "rmm-icarl", "rmm-foster", "beefiso", "der_p", "lucir"}
    assert memory_learners <= set(LEARNERS) | set(PLUGIN_LEARNERS)
    assert memory_learners == set(SUPPORTED) | set(REFUSED)
    assert not set(SUPPORTED) & set(REFUSED)
