"""Benchmarks of CIM against its baseline: run planning and execution, report tables, object-size
analysis, figures.

Layers (each module imports only from the layers above it)::

    layout, stats, eta        names (BASELINE, DEFAULT_SEEDS), REPO-relative paths, a run folder's files;
                              statistics over seeds and number formatting; the time-left estimate
    variants, manifest        variant naming; DIR/benchmark.json (make, read, compare, prepare the folder)
    plan, execute, join       the runs of a benchmark; running them (resume, jobs); joining folders
    tables, sizes, recency,   the report's tables and sections, the figures' panels,
    pairs, platforms,         the figures (matplotlib, imported only when drawing),
    time_split, panels,       and report.build_report / write_run_figures
    figures, report
    command                   run_benchmark, the command under ``exps/benchmark.py``

:mod:`~cim_plugin.bench.figures` is not imported here: matplotlib is the optional "plots" extra.
"""

from .command import run_benchmark
from .eta import eta_seconds, eta_text
from .execute import execute_runs, headline, stop_live_runs, subprocess_runner
from .join import join_benchmarks
from .layout import BASELINE, DEFAULT_SEEDS, REPO_ROOT, RUN_SCRIPT, read_exemplars, read_predictions, read_results
from .manifest import MANIFEST, make_manifest, prepare_out_dir, read_manifest
from .panels import class_names_of, exemplar_columns
from .plan import RunSpec, load_benchmark_configs, plan_runs, validate_runs
from .report import build_report, write_run_figures
from .sizes import BoxIoU, SizeInfo, box_ious, load_dataset, size_info
from .stats import fmt, human_bytes, mean_std
from .tables import collect_runs, results_table, run_order, summary_rows, write_csv
from .variants import variants_for

__all__ = [
    # the command
    "run_benchmark", "join_benchmarks", "build_report", "write_run_figures",
    # planning and running
    "RunSpec", "load_benchmark_configs", "validate_runs", "plan_runs", "variants_for", "execute_runs",
    "subprocess_runner", "stop_live_runs", "headline", "eta_seconds", "eta_text",
    # a benchmark folder
    "BASELINE", "DEFAULT_SEEDS", "REPO_ROOT", "RUN_SCRIPT", "MANIFEST", "make_manifest", "read_manifest",
    "prepare_out_dir", "read_results", "read_predictions", "read_exemplars",
    # the report's numbers
    "collect_runs", "run_order", "summary_rows", "results_table", "write_csv", "mean_std", "fmt", "human_bytes",
    "SizeInfo", "size_info", "load_dataset", "BoxIoU", "box_ious", "class_names_of", "exemplar_columns",
]
