"""``"extends"``: a config written as a base plus its differences reads exactly as the full config would;
loops, missing bases and bad values are errors that say how to fix them; the shipped benchmark configs
that extend a base read as the full configs they replaced."""

import json
from pathlib import Path

import pytest

from cim_plugin.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent


def write(path: Path, config: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config))
    return path


def test_child_keys_override_the_base_and_extends_is_gone(tmp_path):
    write(tmp_path / "base.json", {"model_name": "icarl", "memory_size": 100, "seed": [1993]})
    child = write(tmp_path / "child.json", {"extends": "base.json", "model_name": "der", "cim": True})
    assert load_config(child) == {"model_name": "der", "memory_size": 100, "seed": [1993], "cim": True}


def test_bases_chain_and_paths_are_relative_to_the_file_that_names_them(tmp_path):
    write(tmp_path / "a" / "root.json", {"x": 1, "y": 1, "z": 1})
    write(tmp_path / "a" / "mid.json", {"extends": "root.json", "y": 2})
    leaf = write(tmp_path / "b" / "leaf.json", {"extends": "../a/mid.json", "z": 3})
    assert load_config(leaf) == {"x": 1, "y": 2, "z": 3}


def test_a_loop_is_an_error_naming_the_chain(tmp_path):
    write(tmp_path / "a.json", {"extends": "b.json", "x": 1})
    write(tmp_path / "b.json", {"extends": "a.json", "y": 1})
    with pytest.raises(ConfigError, match="loop"):
        load_config(tmp_path / "a.json")


@pytest.mark.parametrize("value", ["missing.json", "", 3, None])
def test_a_bad_base_is_an_error_before_training(tmp_path, value):
    child = write(tmp_path / "child.json", {"extends": value, "x": 1})
    with pytest.raises(ConfigError, match='"extends"'):
        load_config(child)


def test_a_malformed_base_names_the_base_file(tmp_path):
    (tmp_path / "base.json").write_text('{"x": 1,}')
    child = write(tmp_path / "child.json", {"extends": "base.json"})
    with pytest.raises(ConfigError, match=r"base\.json:1:"):
        load_config(child)


# Full copies of three shipped benchmark configs as they were before they were rewritten as differences.
FULL = {
    "der_synthetic_noaug.json": ("icarl_synthetic.json", {"model_name": "der", "randombbxblur_prob_incre": 0.0}),
    "icarl_photos32.json": ("icarl_photos112.json", {"resolution": 32, "convnet_type": "resnet32"}),
    "foster_photos64.json": ("foster_photos112.json", {"resolution": 64, "convnet_type": "resnet32"}),
}


@pytest.mark.parametrize("name", sorted(FULL))
def test_shipped_configs_that_extend_read_as_their_base_plus_the_stated_keys(name):
    base_name, changes = FULL[name]
    base = json.loads((ROOT / "exps" / "bench" / base_name).read_text())
    assert "extends" not in base
    assert load_config(ROOT / "exps" / "bench" / name) == {**base, **changes}


def test_no_shipped_benchmark_config_is_a_near_copy_of_another():
    """A config that differs from another shipped one in a few keys says so with "extends"."""
    configs = {p.name: json.loads(p.read_text()) for p in sorted((ROOT / "exps" / "bench").glob("*.json"))}
    full = {name: c for name, c in configs.items() if "extends" not in c}
    for name, config in full.items():
        for other, base in full.items():
            if other == name or not set(base) <= set(config):
                continue
            differing = [k for k in config if base.get(k, object()) != config[k]]
            assert len(differing) > 5, f"{name} is {other} with {differing} changed: write it with \"extends\""
