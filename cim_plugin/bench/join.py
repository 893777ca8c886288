"""Join finished benchmark folders into one, for one report.

Seeds added later (a second benchmark of the same config with more seeds), or configs benchmarked
separately, give several folders; ``join_benchmarks`` gathers their run folders into a new folder
(hard links where the file system allows, else copies: the sources are never changed) and writes its
manifest, so that ``build_report`` draws one table over all of them::

    python exps/benchmark.py --join runs/icarl_a runs/icarl_b runs/der --out runs/joined

Rules: a config that appears in several sources must be the same config (every key but "device"),
and one run (config, variant, seed) may come from one source only. The manifest keeps the seeds of
each config (``config_seeds``), so that a config run on fewer seeds is not reported as unfinished, and
the source folders (``joined_from``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from ..config import ConfigError
from ..io import write_json
from .manifest import MANIFEST, MANIFEST_SCHEMA, config_keys_differing, read_manifest

__all__ = ["join_manifests", "join_benchmarks"]


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)


def join_manifests(sources: Sequence[Path]) -> Tuple[Dict[str, Any], Dict[Tuple[str, str, int], Path]]:
    """The joined manifest of the benchmark folders ``sources``, and the source of each run
    (config stem, variant, seed) it lists. ConfigError on a conflict."""
    configs: Dict[str, Dict[str, Any]] = {}
    variants: Dict[str, List[str]] = {}
    config_seeds: Dict[str, List[int]] = {}
    owner: Dict[Tuple[str, str, int], Path] = {}  # (stem, variant, seed) -> the source it comes from
    mask_modes: List[str] = []
    codecs: List[str] = []
    for src in sources:
        src = Path(src)
        manifest = read_manifest(src) if src.is_dir() else None
        if manifest is None:
            raise ConfigError(f"--join: {src} holds no benchmark ({MANIFEST} is missing); give folders written "
                              f"by exps/benchmark.py")
        for stem, entry in manifest["configs"].items():
            if stem in configs:
                keys = config_keys_differing(configs[stem]["config"], entry["config"])
                if keys:
                    raise ConfigError(f"--join: config {stem!r} differs between the folders (keys {keys}); only runs "
                                      f"of the same config can share a table")
            configs.setdefault(stem, entry)
            seeds = manifest.get("config_seeds", {}).get(stem, manifest["seeds"])
            for variant in manifest["variants"][stem]:
                if variant not in variants.setdefault(stem, []):
                    variants[stem].append(variant)
                for seed in seeds:
                    key = (stem, variant, int(seed))
                    if key in owner:
                        raise ConfigError(f"--join: run {stem}/{variant}/seed_{seed} is in both {owner[key]} and "
                                          f"{src}; join folders whose runs do not overlap")
                    owner[key] = src
            config_seeds[stem] = sorted(set(config_seeds.get(stem, [])) | {int(s) for s in seeds})
        mask_modes += [m for m in manifest.get("mask_modes") or [] if m not in mask_modes]
        codecs += [c for c in manifest.get("codecs") or [] if c not in codecs]
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "configs": configs,
        "seeds": sorted({s for seeds in config_seeds.values() for s in seeds}),
        "config_seeds": config_seeds,
        "variants": variants,
        "mask_modes": mask_modes or None,
        **({"codecs": codecs} if codecs else {}),
        "joined_from": [str(Path(s).resolve()) for s in sources],
    }
    return manifest, owner


def join_benchmarks(sources: Sequence[Path], out_dir: Path) -> Dict[str, Any]:
    """Gather the run folders of ``sources`` into the new folder ``out_dir`` and write its manifest.

    ``out_dir`` must not exist or be empty. Returns the manifest written.
    """
    if len(sources) < 2:
        raise ConfigError("--join needs at least two benchmark folders")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigError(f"--join: {out_dir} exists and is not empty; give a new --out folder")
    manifest, owner = join_manifests(sources)
    for (stem, variant, seed), src in owner.items():
        run = Path(src) / stem / variant / f"seed_{seed}"
        if run.is_dir():  # a run never started has no folder; the report lists it as not finished
            shutil.copytree(run, out_dir / stem / variant / run.name, copy_function=_link_or_copy)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / MANIFEST, manifest)
    return manifest
