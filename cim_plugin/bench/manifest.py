"""The benchmark folder's manifest (``DIR/benchmark.json``): making it, reading it, comparing two, and preparing
a folder for a new, resumed or replaced benchmark."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..config import ConfigError
from ..io import write_json
from .variants import variants_for

MANIFEST = "benchmark.json"
MANIFEST_SCHEMA = "cim-plugin/benchmark/1"
REPORT_FILES = ("summary.md", "summary.csv", "curves.png", "old_new.png", "accuracy_matrix.png", "memory.png",
                "exemplars.png")

__all__ = ["MANIFEST", "MANIFEST_SCHEMA", "REPORT_FILES", "make_manifest", "read_manifest", "config_keys_differing",
           "manifest_differences", "prepare_out_dir"]


def make_manifest(configs: Dict[str, Dict[str, Any]], seeds: Sequence[int], mask_modes: Optional[Sequence[str]],
                  codecs: Optional[Sequence[str]] = None, baseline_only: bool = False,
                  no_baseline: bool = False) -> Dict[str, Any]:
    return {
        "schema": MANIFEST_SCHEMA,
        "configs": configs,
        "seeds": [int(s) for s in seeds],
        "variants": {stem: list(variants_for(e["config"], mask_modes, codecs, baseline_only, no_baseline))
                     for stem, e in configs.items()},
        "mask_modes": list(mask_modes) if mask_modes else None,
        **({"codecs": list(codecs)} if codecs else {}),
    }


def read_manifest(out_dir: Path) -> Optional[Dict[str, Any]]:
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON ({err}); remove it or choose another --out folder") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != MANIFEST_SCHEMA:
        raise ConfigError(f"{path} is not a cim-plugin benchmark manifest; choose another --out folder")
    return manifest


def config_keys_differing(a: Dict[str, Any], b: Dict[str, Any]) -> List[str]:
    """The keys two configs of one benchmark config set differently ("device" may differ)."""
    return sorted(k for k in (set(a) | set(b)) - {"device"} if a.get(k, "<unset>") != b.get(k, "<unset>"))


def manifest_differences(old: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    """What differs between two manifests, one phrase each (config keys are named; "device" may
    differ, as for the runner's own resume)."""
    out = []
    old_c, new_c = old.get("configs", {}), new.get("configs", {})
    only_old, only_new = sorted(set(old_c) - set(new_c)), sorted(set(new_c) - set(old_c))
    if only_old:
        out.append(f"configs {only_old} are only in the folder")
    if only_new:
        out.append(f"configs {only_new} are only in this command")
    for stem in [s for s in new_c if s in old_c]:
        keys = config_keys_differing(old_c[stem]["config"], new_c[stem]["config"])
        if keys:
            out.append(f"config {stem!r}: keys {keys} differ")
    if list(old.get("seeds", [])) != list(new.get("seeds", [])):
        out.append(f"seeds {old.get('seeds')} in the folder vs {new.get('seeds')} now")
    if old.get("variants") != new.get("variants") and not only_old and not only_new:
        out.append(f"variants {old.get('variants')} in the folder vs {new.get('variants')} now")
    return out


def prepare_out_dir(out_dir: Path, manifest: Dict[str, Any], resume: bool, overwrite: bool) -> None:
    """Refuse a folder holding another benchmark (unless resume/overwrite); write the manifest.

    resume: the folder's manifest must match (else ConfigError naming the differing keys).
    overwrite: the old benchmark's run folders and report files are deleted first.
    A non-empty folder without a manifest is never touched.
    """
    out_dir = Path(out_dir)
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other; pass one")
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file; give a folder")
    old = read_manifest(out_dir) if out_dir.exists() else None
    if old is None and out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"{out_dir} is not empty and holds no benchmark ({MANIFEST} is missing); "
                          f"choose another --out folder")
    if old is not None:
        if resume:
            diffs = manifest_differences(old, manifest)
            if diffs:
                raise ConfigError(f"{out_dir} holds a benchmark of a different setup: {'; '.join(diffs)}. "
                                  f"Resume with the same configs and --seeds, or choose another --out folder")
        elif overwrite:
            for stem in old.get("configs", {}):
                target = out_dir / stem
                if target.is_dir() and target.resolve().parent == out_dir.resolve():
                    shutil.rmtree(target)
            for name in REPORT_FILES:
                (out_dir / name).unlink(missing_ok=True)
        else:
            stems = sorted(old.get("configs", {}))
            raise ConfigError(f"{out_dir} already holds a benchmark (configs {stems}, seeds {old.get('seeds')}); "
                              f"pass --resume to continue it, --overwrite to replace it, or choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / MANIFEST, manifest)
