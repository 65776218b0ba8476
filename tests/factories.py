"""Random parameters the tests build flows from, each written once; the bijector cases are in `cases.py`."""

import numpy as np
import tensorflow as tf


def lower_triangular(rng, dtype, dim, off_diagonal, diagonal, strict=True):
  """A random lower-triangular `[dim, dim]` matrix, dominated by its diagonal: a well-conditioned MVN scale.

  Args:
    rng: a `np.random.Generator`; the normal entries are drawn first, then the diagonal.
    dtype: of the tensor.
    dim: the size.
    off_diagonal: the standard deviation of the normal entries below the diagonal.
    diagonal: `(low, high)`, the uniform range of the diagonal.
    strict: whether the normal entries are strictly below the diagonal (else on it too, added to the uniform).
  """
  normal = np.tril(rng.normal(size=(dim, dim)) * off_diagonal, -1 if strict else 0)
  return tf.constant(normal + np.diag(rng.uniform(*diagonal, dim)), dtype)
