"""Every config the project ships (``exps/*.json``, ``exps/bench/*.json``) is accepted as it stands: no
ConfigError and no "key has no effect" warning, as shipped and, for the benchmark's configs, with
``"cim": true`` (the variant the benchmark adds). A typo in a shipped key or an out-of-range value fails here,
not an hour into a benchmark."""

from pathlib import Path

import pytest
from conftest import requires_pycil

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "exps").glob("*.json")) + sorted((ROOT / "exps" / "bench").glob("*.json"))


def test_the_project_ships_configs():
    names = {p.name for p in CONFIGS}
    assert {"der_cim.json", "icarl_synthetic.json", "lucir_synthetic.json"} <= names, names


@requires_pycil
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_config_is_accepted(path, capsys):
    from cim_plugin.config import load_config
    from cim_plugin.pycil.checks import check_run

    config = load_config(path)
    config["device"] = ["cpu"]  # configs written for a GPU are checked on the CPU
    variants = [config]
    if path.parent.name == "bench":
        variants.append({**config, "cim": True})
    for variant in variants:
        check_run(dict(variant))
        err = capsys.readouterr().err
        assert "warning" not in err, f"{path.name} (cim={variant.get('cim', False)}): {err}"
