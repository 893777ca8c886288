#!/usr/bin/env python
"""Assemble the real-photo benchmark's dataset: Imagenette2 + Imagewoof2 (10 + 10 ImageNet classes) as one
``train/<wnid>/``, ``val/<wnid>/`` tree of symbolic links (no image is copied).

    python exps/data/prepare_photos20.py /path/to/imagenette2 /path/to/imagewoof2 [--dest data/photos20]

Both sources are the official Imagenette2 / Imagewoof2 folders (full size, 320 px or 160 px variants all
work: the benchmark configs decode every image once at their "resolution"), each holding ``train/`` and
``val/`` with one folder per class. The configs in exps/bench/*_photos*.json read ``data/photos20``.
"""

import argparse
import os
import sys
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="exps/data/prepare_photos20.py", description=__doc__.split("\n\n")[0])
    p.add_argument("sources", nargs="+", type=Path, metavar="SRC", help="Imagenette2 and Imagewoof2 folders")
    p.add_argument("--dest", type=Path, default=Path("data/photos20"), help="tree to create (default data/photos20)")
    args = p.parse_args(argv)
    classes = {}
    for src in args.sources:
        for split in ("train", "val"):
            if not (src / split).is_dir():
                print(f"error: {src / split} does not exist; give the Imagenette2 / Imagewoof2 folders that hold "
                      f"train/ and val/", file=sys.stderr)
                return 2
        for folder in sorted((src / "train").iterdir()):
            if folder.is_dir():
                if folder.name in classes:
                    print(f"error: class {folder.name} is in both {classes[folder.name]} and {src}", file=sys.stderr)
                    return 2
                classes[folder.name] = src
    for split in ("train", "val"):
        (args.dest / split).mkdir(parents=True, exist_ok=True)
        for name, src in classes.items():
            link = args.dest / split / name
            if link.is_symlink() or link.exists():
                link.unlink()
            os.symlink((src / split / name).resolve(), link)
    print(f"{args.dest}: {len(classes)} classes from {len(args.sources)} folder(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
