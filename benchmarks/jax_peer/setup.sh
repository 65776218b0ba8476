#!/usr/bin/env bash
# Creates benchmarks/jax_peer/.venv: the JAX peer of `python -m tfp_hessian bench --peers jax`.
#
# TFP 0.25's JAX substrate (`tensorflow_probability.substrates.jax`) imports only with jax <= 0.6.2, and that
# jax needs numpy < 2.3; the main environment (TensorFlow 2.21) wants a newer numpy, hence a venv of its own.
# TensorFlow itself is not installed here: the JAX substrate does not need it.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"

"$python" -m venv "$here/.venv"
"$here/.venv/bin/python" -m pip install --quiet --upgrade pip
"$here/.venv/bin/python" -m pip install --quiet \
    "jax[cpu]<=0.6.2" "jaxlib<=0.6.2" "numpy<2.3" "tensorflow-probability==0.25.0"
"$here/.venv/bin/python" - <<'PY'
import jax
import numpy as np
from tensorflow_probability.substrates import jax as tfp
print(f"jax {jax.__version__}, numpy {np.__version__}, tfp {tfp.__version__}: OK")
PY
