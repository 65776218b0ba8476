"""Every private name of TensorFlow, TensorFlow Probability and tf-keras this package uses, in one place.

Checked against TensorFlow 2.21, TensorFlow Probability 0.25 and tf-keras 2.21 (`tests/test_private_api.py` fails
loudly when a release renames one of them). Where a public form exists it is used instead, elsewhere.
"""

import tensorflow as tf
import tensorflow_probability as tfp
# pylint: disable=g-direct-tensorflow-import
from tensorflow.python.eager.polymorphic_function import attributes as function_attributes
from tensorflow.python.eager.polymorphic_function import concrete_function as concrete_function_lib
from tensorflow.python.util import nest as tf_nest
# pylint: enable=g-direct-tensorflow-import
from tensorflow_probability.python.bijectors import chain as chain_lib
from tensorflow_probability.python.bijectors import invert as invert_lib
from tensorflow_probability.python.bijectors import joint_map as joint_map_lib
from tensorflow_probability.python.distributions import independent as independent_lib
from tensorflow_probability.python.distributions import sample as sample_lib
from tensorflow_probability.python.distributions import transformed_distribution as td_lib
from tensorflow_probability.python.internal import cache_util

__all__ = [
    "CHAIN",
    "INDEPENDENT",
    "INVERT",
    "JOINT_MAP",
    "SAMPLE",
    "TRANSFORMED",
    "DeferredModule",
    "cached_preimage",
    "flatten_up_to",
    "kwargs_split",
    "made_conditional_size",
    "made_is_conditional",
    "made_masks",
    "made_model",
    "real_nvp_masked_size",
    "resolve_deferred",
    "xla_compiled",
]

# TFP builds these private bases (not the public subclasses) when a member is not a CompositeTensor: an
# `isinstance` test against the public class misses them.
CHAIN = chain_lib._Chain  # pylint: disable=protected-access
INVERT = invert_lib._Invert  # pylint: disable=protected-access
JOINT_MAP = joint_map_lib._JointMap  # pylint: disable=protected-access
TRANSFORMED = td_lib._TransformedDistribution  # pylint: disable=protected-access
INDEPENDENT = independent_lib._Independent  # pylint: disable=protected-access
SAMPLE = sample_lib._Sample  # pylint: disable=protected-access

DeferredModule = tfp.experimental.util.DeferredModule


def kwargs_split(distribution, kwargs):
  """`(distribution_kwargs, bijector_kwargs)` of a `TransformedDistribution`, split as its `log_prob` splits them."""
  return distribution._kwargs_split_fn(kwargs)  # pylint: disable=protected-access


def resolve_deferred(distribution):
  """The distribution a `DeferredModule` builds now (with its variables' current values), else `distribution`.

  `tfp.experimental.vi` surrogate posteriors are `DeferredModule`s: every method call builds the distribution
  afresh from its variables. Building it inside a `tf.function` reads the variables when the function runs.
  """
  while isinstance(distribution, DeferredModule):
    distribution = distribution._build_module()  # pylint: disable=protected-access
  return distribution


def cached_preimage(bijector, y, kwargs):
  """`x` where TFP's bijector cache holds `y` as the output of `bijector.forward(x, **kwargs)`; else None.

  The cache keeps both sides of every call, keyed by tensor identity and the bijector's parameterization (so
  equal bijectors share entries). Only an output of `forward` counts: after `bijector.inverse(y)` the cache
  holds `y` too, with the `x` computed from it, which is no more exact than `y`. TFP marks the output side of
  an entry by the inputs it keeps alive (`dependencies`, None on the input side). The lookup adds no entry.
  """
  if not bijector._is_injective:  # pylint: disable=protected-access
    return None  # TFP caches nothing for these.
  cache = bijector._cache  # pylint: disable=protected-access
  direction = cache._inverse_name  # pylint: disable=protected-access
  key = cache_util.WeakStructRef(y, subkey=(cache.bijector, cache.bijector_class, direction, kwargs))
  entry = cache.storage.get(key)
  if entry is None or entry.dependencies is None:
    return None
  return entry.output_ref()


def flatten_up_to(shallow, value):
  """`value`'s sub-structures at the leaves of `shallow`, in flatten order (TF's `nest.flatten_up_to`)."""
  return tf_nest.flatten_up_to(shallow, value, check_types=False)


def made_masks(network):
  """The masks of a built `tfb.AutoregressiveNetwork`'s masked kernels, input layer first (numpy, `[in, out]`)."""
  return network._masks  # pylint: disable=protected-access


def made_model(network):
  """The Keras model inside a built `tfb.AutoregressiveNetwork` (None before its first call)."""
  return network._network  # pylint: disable=protected-access


def made_is_conditional(network):
  """Whether a `tfb.AutoregressiveNetwork` takes a `conditional_input`."""
  return bool(network._conditional)  # pylint: disable=protected-access


def made_conditional_size(network):
  """The size `C` of a conditional `tfb.AutoregressiveNetwork`'s condition (its `conditional_event_shape`)."""
  return network._conditional_size  # pylint: disable=protected-access


def real_nvp_masked_size(bijector, event_size):
  """The number of coordinates a `tfb.RealNVP` conditions on for events of `event_size` (negative: the last ones).

  `fraction_masked` is resolved against the event size only when the layer first runs; this resolves it now.
  """
  bijector._cache_input_depth(tf.TensorSpec([event_size]))  # pylint: disable=protected-access
  return bijector._masked_size  # pylint: disable=protected-access


def xla_compiled(concrete):
  """`concrete` (a traced `tf.function`'s concrete function) as XLA compiles it, without tracing it again.

  A new function of the same graph, with the attributes `tf.function(jit_compile=True)` gives its own: XLA must
  compile it, and it is not inlined into its caller's graph (which would drop the attribute).
  """
  return concrete_function_lib.ConcreteFunction.from_func_graph(
      concrete.graph, concrete.function_type,
      attrs={function_attributes.XLA_COMPILE: True, function_attributes.NO_INLINE: True})
