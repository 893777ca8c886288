"""Where the repository is: the one definition of ``REPO_ROOT`` (the folder holding ``cim_plugin/``,
``exps/`` and ``third_party/``), for the PyCIL adapter and the benchmark alike."""

from __future__ import annotations

from pathlib import Path

__all__ = ["REPO_ROOT"]

REPO_ROOT = Path(__file__).resolve().parents[1]
