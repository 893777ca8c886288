"""The benchmark report: summary.md, summary.csv and the figures (curves.png, old_new.png, accuracy_matrix.png,
memory.png, exemplars.png) rebuilt from the finished runs of a benchmark folder; and the two figures every run
folder gets (:func:`write_run_figures`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from ..io import atomic_write_text
from .layout import BASELINE
from .manifest import read_manifest
from .pairs import pairs_section
from .panels import curve_panels, exemplar_columns, matrix_panels, memory_panels, old_new_panels
from .platforms import platform_section
from .recency import recency_section
from .sizes import SizeInfo, dataset_key, load_dataset, object_size_section, size_info
from .tables import collect_runs, old_new_section, results_table, run_order, summary_rows, write_csv
from .time_split import time_section

__all__ = ["write_run_figures", "build_report"]


def write_run_figures(run_dir: Path, results: Dict[str, Any]) -> Dict[str, Path]:
    """old_new.png and accuracy_matrix.png of one run (its results.json dict) into ``run_dir``."""
    from . import figures as plots  # matplotlib is the optional "plots" extra: imported only when drawing

    key = (results.get("learner") or "run", BASELINE if not results.get("cim") else "cim")
    groups, order = {key: {results.get("seed", 0): results}}, [key]
    written = {}
    panels = old_new_panels(groups, order)
    if panels:
        written["old_new.png"] = plots.plot_old_new(panels, Path(run_dir) / "old_new.png")
    panels = matrix_panels(groups, order)
    if panels:
        written["accuracy_matrix.png"] = plots.plot_accuracy_matrix(panels, Path(run_dir) / "accuracy_matrix.png")
    return written


def build_report(out_dir: Path, dataset_loader: Callable[[Dict[str, Any]], Any] = load_dataset) -> Dict[str, Path]:
    """(Re)build summary.md, summary.csv and the figures from the finished runs under out_dir.

    Returns name -> path of the files written. ``dataset_loader(config)`` loads a run's dataset
    (for object sizes, box IoU and the original images); a failure there only drops those parts.
    """
    from . import figures as plots  # matplotlib is the optional "plots" extra: imported only when drawing

    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    groups = collect_runs(out_dir)
    written: Dict[str, Path] = {}
    lines = ["# CIM benchmark: plug-in vs baseline", ""]
    if manifest:
        paths = ", ".join(f"`{e['path']}`" for e in manifest["configs"].values())
        lines.append(f"Configs {paths}; seeds {manifest['seeds']}.")
        per_config = manifest.get("config_seeds", {})
        if any(list(seeds) != list(manifest["seeds"]) for seeds in per_config.values()):
            lines.append("Seeds per config: " + "; ".join(f"{s} {v}" for s, v in per_config.items()) + ".")
        if manifest.get("joined_from"):
            lines.append("Joined (`exps/benchmark.py --join`) from " +
                         ", ".join(f"`{p}`" for p in manifest["joined_from"]) + ".")
    if not groups:
        lines += ["", "No finished run yet."]
        atomic_write_text(out_dir / "summary.md", "\n".join(lines) + "\n")
        write_csv(out_dir / "summary.csv", [])
        return {"summary.md": out_dir / "summary.md", "summary.csv": out_dir / "summary.csv"}
    order = run_order(groups, manifest)
    rows = summary_rows(groups, order)
    write_csv(out_dir / "summary.csv", rows)
    written["summary.csv"] = out_dir / "summary.csv"

    datasets: Dict[str, Tuple[Any, Optional[SizeInfo]]] = {}
    notes = []
    for runs in groups.values():
        config = next(iter(runs.values()))["config"]
        key = dataset_key(config)
        if key in datasets:
            continue
        try:
            idata = dataset_loader(config)
            datasets[key] = (idata, size_info(idata))
        except Exception as err:  # the tables and curves do not need the data
            datasets[key] = (None, None)
            notes.append(f"dataset {config.get('dataset')!r} could not be loaded ({type(err).__name__}: {err}); "
                         f"object-size tables, box IoU and original images are left out")

    lines += ["", "## Results (mean ± std over seeds)", ""] + results_table(rows) + [
        "", "Average incremental accuracy = mean top-1 over phases. std = sample std over seeds (none with one "
        "seed). Gains are CIM minus baseline of the same config, paired by seed, shown as mean ± standard error "
        "(s.e. = sample std of the paired differences / √seeds; summary.csv also has their std); a gain is "
        "resolved from noise when gain − 1 s.e. > 0. Time ratio = total wall time "
        "of the variant / of the baseline over the same seeds. Memory is the bytes held after the last phase."]
    lines += pairs_section(groups, order)
    lines += old_new_section(groups, order)
    lines += recency_section(groups, order)
    lines += time_section(groups, order)
    lines += object_size_section(groups, order, datasets)
    lines += platform_section(groups, order)

    panels = curve_panels(groups, order)
    written["curves.png"] = plots.plot_curves(panels, out_dir / "curves.png")
    figures = ["", "## Figures", "", "![accuracy per phase](curves.png)"]
    on_panels = old_new_panels(groups, order)
    if on_panels:
        written["old_new.png"] = plots.plot_old_new(on_panels, out_dir / "old_new.png")
        figures.append("![top-1 on old vs new classes per phase](old_new.png)")
    mat_panels = matrix_panels(groups, order)
    if mat_panels:
        written["accuracy_matrix.png"] = plots.plot_accuracy_matrix(mat_panels, out_dir / "accuracy_matrix.png")
        figures.append("![accuracy matrix: top-1 on each task after each phase](accuracy_matrix.png)")
    mem_panels = memory_panels(groups, order, datasets)
    if mem_panels:
        written["memory.png"] = plots.plot_memory(mem_panels, out_dir / "memory.png")
    if "memory.png" in written:
        figures.append("![exemplars per class](memory.png)")
    for stem, variant in order:
        if variant == BASELINE:
            continue
        runs = groups[(stem, variant)]
        run = runs[min(runs)]
        idata = datasets.get(dataset_key(run["config"]), (None, None))[0]
        columns, title = exemplar_columns(run["_dir"], idata)
        if columns:
            written["exemplars.png"] = plots.plot_exemplars(columns, out_dir / "exemplars.png", title=title)
            figures.append(f"![stored exemplars: original, CAM, box, decoded](exemplars.png) — {title}")
            break
    lines += figures
    expected = manifest and {(s, v) for s, vs in manifest.get("variants", {}).items() for v in vs}
    if manifest:
        seeds_of = manifest.get("config_seeds", {})
        missing = [f"{s}/{v}/seed_{seed}" for s, v in sorted(expected) for seed in seeds_of.get(s, manifest["seeds"])
                   if seed not in groups.get((s, v), {})]
        if missing:
            notes.append(f"{len(missing)} run(s) not finished, left out: {', '.join(missing)}")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    atomic_write_text(out_dir / "summary.md", "\n".join(lines) + "\n")
    written["summary.md"] = out_dir / "summary.md"
    return written
