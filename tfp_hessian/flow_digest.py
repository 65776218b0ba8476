"""The fingerprint of a flow: what `hessians_in_chunks` compares to resume a run and to reuse a trace.

A run in `out` records the sha256 of the flow it was computed with (`ResultsDirectory.check_flow`), with the values
of every tensor and variable: resuming with other parameters is refused. The per-chunk `tf.function`s are kept
with the digest taken with variables by identity (`chunk_step`): training the flow keeps a trace, a tensor replaced
in it does not.
"""

import hashlib

import numpy as np
import tensorflow as tf
from tensorflow_probability.python.bijectors import bijector as bijector_lib
from tensorflow_probability.python.distributions import distribution as distribution_lib

__all__ = ["flow_digest"]


def flow_digest(distribution, variable_values=True):
  """sha256 of a flow's structure and parameters: its distributions', bijectors' and linear operators' classes and
  `parameters`, with the values of tensors, variables (Keras layers' included) and of what callables close over.

  With `variable_values=False` a variable counts by its identity, dtype and shape only: what a trace depends on.
  Called after the flow has run once, so that lazily built layers and conditioners have their weights.
  """
  digest = hashlib.sha256()
  seen = {}  # id -> object: holding the object keeps its id from being reused during the walk

  def visit(value):
    if id(value) in seen:
      return
    if isinstance(value, (list, tuple, dict)):
      seen[id(value)] = value
    if isinstance(value, (distribution_lib.Distribution, bijector_lib.Bijector, tf.linalg.LinearOperator)):
      seen[id(value)] = value
      digest.update(type(value).__qualname__.encode())
      for key in sorted(value.parameters):
        digest.update(key.encode())
        visit(value.parameters[key])
    elif not variable_values and (isinstance(value, tf.Variable) or (
        hasattr(value, "assign") and hasattr(value, "shape") and hasattr(value, "dtype"))):
      seen[id(value)] = value
      digest.update(f"variable {id(value)} {value.dtype}{tuple(value.shape)}".encode())
    elif isinstance(value, (tf.Tensor, tf.Variable, np.ndarray, np.generic, int, float, complex)) or (
        hasattr(value, "__array__") and hasattr(value, "shape")):
      array = np.asarray(value)
      digest.update(f"{array.dtype}{array.shape}".encode())
      digest.update(np.ascontiguousarray(array).tobytes())
    elif isinstance(value, tf.Module) or (callable(value) and isinstance(getattr(value, "weights", None), list)):
      # tf-keras layers and models (tf.Modules), Keras 3 layers: their variables, in a fixed order.
      seen[id(value)] = value
      digest.update(type(value).__qualname__.encode())
      for variable in value.variables if isinstance(value, tf.Module) else value.weights:
        visit(variable)
    elif isinstance(value, (list, tuple)):
      for item in value:
        visit(item)
    elif isinstance(value, dict):
      for key in sorted(value, key=repr):
        digest.update(repr(key).encode())
        visit(value[key])
    elif isinstance(value, (str, bool, type(None))):
      digest.update(repr(value).encode())
    elif callable(value):
      seen[id(value)] = value
      digest.update(getattr(value, "__qualname__", type(value).__qualname__).encode())
      for cell in getattr(value, "__closure__", None) or ():
        try:
          visit(cell.cell_contents)
        except ValueError:  # an empty cell
          pass
    else:
      digest.update(type(value).__qualname__.encode())

  visit(distribution)
  return digest.hexdigest()
