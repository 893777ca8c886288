#!/usr/bin/env python
"""Benchmark CIM against the baseline: every config with "cim" off and on, same seeds.

    python exps/benchmark.py exps/icarl_cim.json exps/der_cim.json --seeds 1993 1994 1995 --out runs/bench
    python exps/benchmark.py ... --out runs/bench --resume        # go on after an interruption
    python exps/benchmark.py ... --jobs 2                         # two runs at once (one thread each on 2 cores)
    python exps/benchmark.py --report-only --out runs/bench       # rebuild tables and figures
    python exps/benchmark.py --join runs/a runs/b --out runs/ab   # one report over several benchmark folders
    python exps/benchmark.py big_memory.json --baseline-only ...  # a reference arm without CIM, to --join
    python exps/benchmark.py tiny_budget.json --no-baseline --mask-modes cim full --codecs jpeg ...
                                        # CIM variants only, for a budget under one full image per class

Writes DIR/summary.md, summary.csv, curves.png, memory.png, exemplars.png and one run folder per
(config, variant, seed). Exit status: 0 all runs finished, 1 some failed, 2 bad input.
"""

import argparse
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cim_plugin.config import CIM_MASK_MODES, EXEMPLAR_CODECS  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="exps/benchmark.py", description=__doc__.split("\n\n")[0])
    p.add_argument("configs", nargs="*", metavar="CONFIG.json", help="PyCIL JSON config(s); several give one table")
    p.add_argument("--seeds", nargs="+", type=int, metavar="SEED", help="seeds (default 1993 1994 1995)")
    p.add_argument("--out", type=Path, default=None, help="benchmark folder (default runs/benchmark_<configs>_<time>)")
    p.add_argument("--mask-modes", nargs="+", choices=CIM_MASK_MODES, metavar="MODE",
                   help=f"one CIM variant per mask mode ({', '.join(CIM_MASK_MODES)}); default: the config's "
                        f'"cim_mask", else one "cim" variant')
    p.add_argument("--codecs", nargs="+", choices=EXEMPLAR_CODECS, metavar="CODEC",
                   help=f"one CIM variant per mask mode and exemplar codec ({', '.join(EXEMPLAR_CODECS)}; "
                        '"jpeg" variants are named "<variant>-jpeg"); default: the config\'s "exemplar_codec"')
    p.add_argument("--baseline-only", action="store_true",
                   help="run only each config's baseline (no CIM variant): a reference arm, e.g. the learner with "
                        "a larger memory, to join with --join beside a full benchmark")
    p.add_argument("--no-baseline", action="store_true",
                   help="run only the CIM variants (two or more, e.g. --mask-modes cim full --codecs jpeg), compared "
                        "with each other: for a budget too small for one full image per class")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="runs at once, each in its own process with cores/N threads (default 1)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the benchmark in --out (finished runs are kept)")
    mode.add_argument("--overwrite", action="store_true", help="replace the benchmark in --out")
    mode.add_argument("--report-only", action="store_true", help="only rebuild the tables and figures of --out")
    mode.add_argument("--join", nargs="+", type=Path, metavar="DIR",
                      help="gather the runs of these finished benchmark folders into the new folder --out "
                           "(hard links; the sources are not changed) and draw one report over them")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    # imported after parsing, so that --help and bad arguments answer without loading torch
    from cim_plugin.bench import join_benchmarks, run_benchmark
    from cim_plugin.config import ConfigError
    from cim_plugin.datasets import DatasetLayoutError
    from cim_plugin.pycil import PyCILMissing, checks

    # SIGTERM -> SystemExit, so the run in progress is terminated with the benchmark (no orphan)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.resume and args.out is None:
        print("error: --resume needs --out DIR (the benchmark folder to continue)", file=sys.stderr)
        return 2
    try:
        if args.join:
            if (args.out is None or args.configs or args.seeds or args.mask_modes or args.codecs or args.baseline_only
                    or args.no_baseline):
                print("error: --join takes benchmark folders and --out DIR only (no configs, --seeds, --mask-modes "
                      "or --codecs: the folders' own are kept)", file=sys.stderr)
                return 2
            join_benchmarks(args.join, args.out)
            args.report_only = True
        return run_benchmark(args.configs, seeds=args.seeds, out_dir=args.out, mask_modes=args.mask_modes,
                             resume=args.resume, overwrite=args.overwrite, report_only=args.report_only,
                             jobs=args.jobs, checks=checks, codecs=args.codecs, baseline_only=args.baseline_only,
                             no_baseline=args.no_baseline)
    except (ConfigError, PyCILMissing, DatasetLayoutError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue with the same command plus --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
