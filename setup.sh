#!/usr/bin/env bash
# One command from a fresh clone: virtual environment, a torch+torchvision pair that import together,
# the pinned PyCIL submodule, then the demo (iCaRL vs iCaRL+CIM).     bash setup.sh [--no-demo]
set -euo pipefail
cd "$(dirname "$0")"
DEMO=1
[ "${1:-}" = "--no-demo" ] && DEMO=0
PY=${PYTHON:-python3}
VENV=.venv
PIP="$VENV/bin/pip"

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"

torch_ok() { "$VENV/bin/python" - <<'PYEOF' 2>/dev/null
import torch, torchvision
from torchvision.ops import nms
nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
PYEOF
}

if ! torch_ok; then
  echo "== installing torch + torchvision =="
  # torch 2.14.1 / torchvision 0.29.1 are a matching pair (on some machines they lie on local disk).
  # A CPU-only torch wheel beside PyPI's torchvision fails ("operator torchvision::nms does not exist"),
  # so if the first pair does not import, fall back to the registry's own 2.13.0 / 0.28.0 pair.
  "$PIP" install -q "torch==2.14.1" "torchvision==0.29.1" || true
  if ! torch_ok; then
    "$PIP" --isolated install -q "torch==2.13.0" "torchvision==0.28.0"
  fi
  torch_ok || { echo "error: could not install a torch+torchvision pair that imports" >&2; exit 1; }
fi
"$PIP" install -q numpy scipy tqdm pytest matplotlib ruff  # ruff: the lint .ci/run enforces (ruff.toml)
"$PIP" install -q --no-deps -e .

if [ ! -f third_party/PyCIL/trainer.py ]; then
  echo "== fetching the pinned PyCIL submodule =="
  if ! git submodule update --init third_party/PyCIL; then
    cat >&2 <<'MSG'
!! PyCIL could not be fetched (third_party/PyCIL is empty). Every test that runs PyCIL will be SKIPPED
!! and exps/run.py will refuse to run. Fix: make https://github.com/G-U-N/PyCIL.git reachable (or point git
!! at a local copy: git config --global url.<dir>.insteadOf https://github.com/G-U-N/PyCIL.git) and run
!!     git submodule update --init third_party/PyCIL
MSG
    [ "$DEMO" = 1 ] && exit 1
  fi
fi

"$VENV/bin/python" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
if [ "$DEMO" = 1 ]; then
  PYTHON="$VENV/bin/python" bash exps/demo.sh  # baseline and CIM side by side: table, curves.png, exemplars.png
fi
