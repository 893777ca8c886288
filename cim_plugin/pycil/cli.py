"""Command line of `exps/run.py`: parse, run, turn known failures into one clear message."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from ..config import ConfigError, load_config
from ..datasets import DatasetLayoutError
from . import distributed
from .host import PyCILMissing
from .runner import run_config


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="exps/run.py",
        description="Run a PyCIL config (optionally with CIM exemplar compression) and write results.json.",
    )
    p.add_argument("config_pos", nargs="?", metavar="CONFIG.json", help="PyCIL JSON config")
    p.add_argument("--config", dest="config_opt", metavar="CONFIG.json", help="same, as PyCIL's main.py takes it")
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/<config>_<time>)")
    p.add_argument("--strict", action="store_true",
                   help='stop before training on unknown config keys and ignored values (same as "strict": true)')
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the run in --out from its last finished phase")
    mode.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    path = args.config_opt or args.config_pos
    if path is None:
        parser().error("give a config: exps/run.py CONFIG.json (or --config CONFIG.json)")
    try:
        config = load_config(path)
        if args.resume and args.out is None:
            raise ConfigError("--resume needs --out DIR (the folder of the run to continue)")
        paths = run_config(config, out_dir=args.out, config_path=Path(path), resume=args.resume,
                           overwrite=args.overwrite, strict=args.strict)
    except (ConfigError, PyCILMissing, DatasetLayoutError) as err:
        if distributed.speaks():  # under torchrun every process stops with the same message: one prints it
            print(f"error: {err}", file=sys.stderr)
        distributed.shutdown()
        return 2
    except Exception as err:
        if distributed.launched():  # which process stopped, why, and what is safe on disk; then the traceback
            print(distributed.failure_message(err), file=sys.stderr, flush=True)
        raise
    distributed.shutdown()
    for p in paths if distributed.speaks() else ():
        print(f"results: {p}")
    return 0
