"""Reading and validating a PyCIL JSON config plus the plug-in's own keys.

Configuration is read once, here, at the edge: everything downstream receives a plain dict
whose keys have been checked. Errors name the file, the key, what was expected and how to fix it.
"""

from __future__ import annotations

import difflib
import json
import math
from pathlib import Path
from typing import Any, Dict, Iterable, List, Tuple

from .method.defaults import CIM_DEFAULTS  # re-exported: the CIM keys' defaults live with the method
from .method.memory import codec_names, get_codec


class ConfigError(ValueError):
    """A config file or key the plug-in cannot use. The message says how to fix it."""


CIM_MASK_MODES = ("cim", "cam", "random", "center", "full")
PHI_LR_SCHEDULES = ("host", "constant")
EXEMPLAR_CODECS = codec_names()  # the registered exemplar codecs (cim_plugin.method.memory.registry)

# Keys read by the runner itself (not by PyCIL). "strict": true does what `exps/run.py --strict` does.
RUNNER_KEYS = {"data_root", "strict"}

# Keys a PyCIL config must have; the runner fills the rest with PyCIL's usual values.
REQUIRED_KEYS = ("dataset", "model_name", "init_cls", "increment", "memory_size", "convnet_type")
RUN_DEFAULTS: Dict[str, Any] = {
    "prefix": "cim",
    "shuffle": True,
    "seed": [1993],
    "device": ["cpu"],
    "memory_per_class": 20,
    "fixed_memory": False,
}

# A value to suggest when a key of the runner is out of range (PyCIL's usual ones; CIM keys suggest their default).
EXAMPLES: Dict[str, Any] = {"memory_size": 2000, "init_cls": 10, "increment": 10, "memory_per_class": 20}


def _read_json_object(path: Path) -> Dict[str, Any]:
    """One JSON file as a dict; a malformed file raises ConfigError with file, line and column."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist (pass the path of a PyCIL JSON config)")
    text = path.read_text()
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:
        line = text.splitlines()[err.lineno - 1] if 0 < err.lineno <= len(text.splitlines()) else ""
        raise ConfigError(
            f"{path}:{err.lineno}:{err.colno}: malformed JSON: {err.msg}\n    {line}\n    "
            f"{' ' * max(err.colno - 1, 0)}^\n(fix the JSON syntax at that place; trailing commas and "
            f"comments are not allowed in JSON)"
        ) from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: the top level must be a JSON object {{...}}, got {type(config).__name__}")
    return config


def load_config(path: str | Path, _chain: Tuple[Path, ...] = ()) -> Dict[str, Any]:
    """Read a JSON config; a malformed file raises ConfigError with file, line and column.

    ``"extends": "base.json"`` (a path relative to this file's folder) reads the base config first and
    lays this file's keys over it: a config states only how it differs from its base. Bases may extend
    further bases; a loop is an error. The returned dict has no ``"extends"`` key, so runs, manifests and
    resume checks see the full config, exactly as if it had been written out whole.
    """
    path = Path(path)
    config = _read_json_object(path)
    if "extends" not in config:
        return config
    base = config.pop("extends")
    if not isinstance(base, str) or not base:
        raise ConfigError(f'{path}: "extends" must be the path of a base JSON config (relative to {path.parent}), '
                          f"got {base!r}")
    base_path = (path.parent / base).resolve()
    chain = _chain + (path.resolve(),)
    if base_path in chain:
        loop = " -> ".join(str(p) for p in chain + (base_path,))
        raise ConfigError(f'{path}: "extends" makes a loop ({loop}); remove "extends" from one of them')
    if not base_path.is_file():
        raise ConfigError(f'{path}: "extends" names {base_path}, which does not exist (the path is relative to '
                          f"{path.parent})")
    merged = load_config(base_path, chain)
    merged.update(config)
    return merged


def closest_key(key: str, valid: Iterable[str]) -> str | None:
    """The valid key closest to `key` (typo help), or None."""
    matches = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(value: Any, valid: Iterable[str]) -> str:
    """'; did you mean "x"?' naming the valid name closest to ``value`` (case-insensitive), or ''."""
    if not isinstance(value, str):
        return ""
    by_lower = {str(v).lower(): str(v) for v in valid}
    hint = closest_key(value.lower(), by_lower)
    return f'; did you mean "{by_lower[hint]}"?' if hint else ""


def one_of(key: str, value: Any, valid: Iterable[str], detail: str = "") -> ConfigError:
    """The error for a ``key`` whose ``value`` is none of ``valid``: the valid values, the closest, the fix."""
    valid = list(valid)
    return ConfigError(f'"{key}" must be one of {valid}{detail}, got {value!r}{did_you_mean(value, valid)} '
                       f'(fix: set "{key}" to one of them)')


def unknown_key_warnings(config: Dict[str, Any], valid: Iterable[str]) -> List[str]:
    """One warning per key that nothing reads, naming the closest valid key."""
    valid = set(valid)
    out = []
    for key in config:
        if key in valid:
            continue
        hint = closest_key(key, valid)
        msg = f'config key "{key}" is not read by PyCIL, the learner or the plug-in and has no effect'
        out.append(msg + (f'; did you mean "{hint}"?' if hint else ""))
    return out


def ignored_value_warnings(given: Iterable[str], config: Dict[str, Any], dataset_keys: Dict[str, Iterable[str]],
                           strict: bool = False) -> List[str]:
    """Keys the config sets whose values nothing will read in this run (each key once).

    ``given``: the keys the config file sets (before defaults); ``config``: with defaults; ``dataset_keys``:
    dataset name -> the option keys it reads. Reported: a dataset option of another dataset than the run's;
    with ``strict`` only (a config often carries the keys of its variants, as the benchmark's do: CIM's keys
    in the baseline, ``jpeg_quality`` for the JPEG variant) CIM keys without ``"cim": true`` and a codec's
    quality key (``jpeg_quality``) without that codec as ``"exemplar_codec"``.
    """
    given = [k for k in given if k != "cim"]
    out = []
    own = set(dataset_keys.get(str(config.get("dataset", "")).lower(), ()))
    if not config.get("data_root"):
        own.discard("data_root")  # PyCIL's own datasets (or cifar100 without a folder) read none of ours
    others = {k for name, keys in dataset_keys.items() for k in keys} - own - {"data_root"}
    for key in given:
        if key in others:
            readers = sorted(name for name, keys in dataset_keys.items() if key in keys)
            out.append(f'config key "{key}" is read by dataset(s) {readers} only, and this run\'s "dataset" is '
                       f'{config.get("dataset")!r}: its value is ignored (remove it)')
    cim_on = config.get("cim") is True
    for codec in map(get_codec, EXEMPLAR_CODECS):
        key = codec.quality_key
        if strict and cim_on and key and key in given and config.get("exemplar_codec") != codec.name:
            out.append(f'"{key}" is set but "exemplar_codec" is {config.get("exemplar_codec")!r}: the quality is '
                       f'ignored (set "exemplar_codec": "{codec.name}", or remove "{key}")')
    unused_cim = [k for k in given if k in CIM_DEFAULTS]
    if strict and not cim_on and unused_cim:
        out.append(f'CIM key(s) {unused_cim} are set but "cim" is not true: their values are ignored (add '
                   f'"cim": true, or remove them)')
    return out


def check_strict(problems: List[str]) -> None:
    """Under --strict (or "strict": true) the config's warnings are one ConfigError, before training."""
    if problems:
        listed = "".join(f"\n  - {p}" for p in problems)
        raise ConfigError(f"strict mode (--strict or \"strict\": true) stops on {len(problems)} config "
                          f"problem(s):{listed}\nFix each, or run without --strict to only be warned.")


def _suggestion(key: str) -> str:
    """How a range or type error on ``key`` says the fix: an example value (its default where it has one)."""
    if key in CIM_DEFAULTS:
        return f' (fix: e.g. "{key}": {json.dumps(CIM_DEFAULTS[key])}, the default)'
    if key in RUN_DEFAULTS:
        return f' (fix: e.g. "{key}": {json.dumps(RUN_DEFAULTS[key])}, the default)'
    if key in EXAMPLES:
        return f' (fix: e.g. "{key}": {json.dumps(EXAMPLES[key])}, as PyCIL\'s configs)'
    return ""


def _require_number(config, key, *, low=None, high=None, low_open=False, high_open=False, integer=False):
    value = config[key]
    kind = "an integer" if integer else "a number"
    lo = "(" if low_open or low is None else "["
    hi = ")" if high_open or high is None else "]"
    rng = f"{lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise ConfigError(f'"{key}" must be {kind} in {rng}, got {value!r}{_suggestion(key)}')
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f'"{key}" must be finite, in {rng}, got {value!r}{_suggestion(key)}')
    bad = (
        (low is not None and (value <= low if low_open else value < low))
        or (high is not None and (value >= high if high_open else value > high))
    )
    if bad:
        raise ConfigError(f'"{key}" must lie in {rng}, got {value!r}{_suggestion(key)}')


def validate_cim_keys(config: Dict[str, Any]) -> None:
    """Check the plug-in's keys (already filled with defaults); raise ConfigError if out of range."""
    if not isinstance(config["cim"], bool):
        raise ConfigError(f'"cim" must be true or false, got {config["cim"]!r} (fix: "cim": true or "cim": false)')
    if config["cim_mask"] not in CIM_MASK_MODES:
        raise one_of("cim_mask", config["cim_mask"], CIM_MASK_MODES)
    _require_number(config, "compress_ratio", low=1.0, low_open=True)
    _require_number(config, "mask_threshold", low=0.0, high=1.0, low_open=True, high_open=True)
    _require_number(config, "phi_lr", low=0.0, low_open=True)
    if config["phi_lr_schedule"] not in PHI_LR_SCHEDULES:
        raise one_of("phi_lr_schedule", config["phi_lr_schedule"], PHI_LR_SCHEDULES,
                     ' ("host": φ\'s lr follows the CIL optimiser\'s schedule, as the official code; "constant": '
                     'phi_lr throughout)')
    _require_number(config, "lr_ratio", low=0.0)
    if not isinstance(config["inner_grad_through_mask"], bool):
        raise ConfigError('"inner_grad_through_mask" must be true or false (false: the inner step\'s gradient treats '
                          'the hybrid image as data, as the paper\'s equation; true: also through the mask\'s use '
                          f'of θ, as the official code), got {config["inner_grad_through_mask"]!r} (fix: '
                          '"inner_grad_through_mask": false, the default)')
    _require_number(config, "max_phi_grad_norm", low=0.0, low_open=True)
    _require_number(config, "meta_batch_size", low=1, integer=True)
    _require_number(config, "num_meta_iters_per_cls", low=0.0)
    _require_number(config, "cam_update_interval", low=1, integer=True)
    _require_number(config, "randombbxblur_prob_incre", low=0.0, high=1.0)
    _require_number(config, "codec_augment_prob", low=0.0, high=1.0)
    _require_number(config, "div_coef", low=0.0)
    _require_number(config, "reg_coef", low=0.0)
    if config["exemplar_codec"] not in EXEMPLAR_CODECS:
        raise one_of("exemplar_codec", config["exemplar_codec"], EXEMPLAR_CODECS,
                     " (" + ", ".join(f"{json.dumps(c)}: {get_codec(c).description}" for c in EXEMPLAR_CODECS) + ")")
    quality = config["jpeg_quality"]
    if quality != "auto" and (isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100):
        raise ConfigError(f'"jpeg_quality" must be an integer in [1, 100] (libjpeg quality; 75 is a usual '
                          f'choice) or "auto" (MRDC\'s choice on the first phase\'s model), got {quality!r} '
                          f'(fix: e.g. "jpeg_quality": 75, the default)')


def validate_run_keys(config: Dict[str, Any]) -> None:
    """Check the PyCIL keys the runner relies on; raise ConfigError naming the key."""
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise ConfigError(
            f"config lacks required key(s) {missing}; a PyCIL config names at least {list(REQUIRED_KEYS)} "
            f"(fix: add them, e.g. from PyCIL's exps/icarl.json)"
        )
    for key in ("dataset", "model_name", "convnet_type"):
        if not isinstance(config[key], str):
            raise ConfigError(f'"{key}" must be a string, got {config[key]!r} (fix: e.g. "dataset": "cifar100", '
                              f'"model_name": "icarl", "convnet_type": "resnet32")')
    _require_number(config, "init_cls", low=1, integer=True)
    _require_number(config, "increment", low=1, integer=True)
    _require_number(config, "memory_size", low=0, integer=True)
    if config.get("fixed_memory"):
        _require_number(config, "memory_per_class", low=1, integer=True)
    seeds = config["seed"]
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        config["seed"] = [seeds]
    elif not (isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise ConfigError(f'"seed" must be an integer or a non-empty list of integers, got {seeds!r} '
                          f'(fix: e.g. "seed": [1993], as PyCIL\'s configs)')
    device = config["device"]
    if isinstance(device, (str, int)):
        config["device"] = [device]
    elif not (isinstance(device, list) and device):
        raise ConfigError(f'"device" must be a list such as ["cpu"] or ["0"], got {device!r} (fix: "device": ["cpu"] '
                          f'for the CPU, ["0"] for the first GPU)')
    if "strict" in config and not isinstance(config["strict"], bool):
        raise ConfigError(f'"strict" must be true or false, got {config["strict"]!r} (fix: "strict": true stops on '
                          f'unknown keys and ignored values before training; false, the default, only warns)')


def with_defaults(config: Dict[str, Any]) -> Dict[str, Any]:
    """A copy of `config` with the runner's and the plug-in's defaults filled in (config wins)."""
    out = dict(RUN_DEFAULTS)
    out.update(CIM_DEFAULTS)
    out.update(config)
    return out

