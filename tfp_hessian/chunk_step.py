"""One chunk of `hessians_in_chunks` across a `tf.distribute.Strategy`'s replicas.

Each chunk is split across the replicas in order (`experimental_distribute_values_from_function`), computed by
`strategy.run` in one `tf.function` and gathered back in point order (`strategy.gather`). The function is kept
with the flow (weakly), so another call on the same flow, strategy and chunk shape reuses its trace. Under
`MultiWorkerMirroredStrategy` every worker computes its replicas' share of each chunk and receives the whole
chunk, starting where the chief (the only one that reads `out`) says.
"""

import weakref

import tensorflow as tf

from tfp_hessian import point_sources, sweep
from tfp_hessian.flow_digest import flow_digest
from tfp_hessian.stiff_sloppy import spectrum as eigendecomposition

__all__ = ["agree_on_start", "split_across_replicas", "step_for"]

# The per-chunk `tf.function`s of earlier calls, by flow, then strategy, then `(what, row layout)`: another call on
# the same flow reuses the trace. Weak keys, and steps that hold their flow and strategy only weakly, so that the
# cache never keeps a flow (or its variables' memory) alive.
_STEPS = weakref.WeakKeyDictionary()


def step_for(distribution, what, strategy, columns):
  """The per-chunk `tf.function` of this flow, strategy, `what` and row layout: an earlier call's if the flow is
  the same as when that one ran, else a new one.

  A trace bakes in what the flow holds by value (tensors, numbers, the structure) and reads its variables when it
  runs, so "the same" is `flow_digest` with variables by identity: training the flow's variables keeps the trace,
  a tensor replaced in its parameters or in a conditioner's closure does not.

  Returns:
    `(step, remember)`, `step(values, shared_kwargs)`; call `remember()` once the step has run: a flow whose Keras
    layers are built on first use is fingerprinted as built, as the next call will find it.
  """
  steps = _STEPS.setdefault(distribution, weakref.WeakKeyDictionary()).setdefault(strategy, {})
  key = (what, columns.signature)
  cached = steps.get(key)
  if cached is not None and cached[0] == flow_digest(distribution, variable_values=False):
    return cached[1], lambda: None
  step = _new_step(weakref.ref(distribution), what, weakref.ref(strategy), columns.signature)

  def remember():
    steps[key] = (flow_digest(distribution, variable_values=False), step)

  return step, remember


def _new_step(distribution_ref, what, strategy_ref, signature):
  """The per-chunk `tf.function`: each replica's share computed by `strategy.run`, gathered in point order.

  The flow and strategy are dereferenced only while tracing, inside a call of `hessians_in_chunks` that holds
  them; the shared kwargs are arguments, not captures, so a cached step never computes with another call's.
  """

  def compute(rows, shared):
    z, kwargs = point_sources.Columns.split(signature, rows, shared)
    derivatives = sweep.log_prob_and_derivatives(distribution_ref(), z, **kwargs)
    if what == "hessian":
      return (derivatives.hessian,)
    if what == "derivatives":
      return tuple(derivatives)
    eigenvalues, eigenvectors, finite = eigendecomposition(derivatives.hessian)
    # Collectives take no bool: `finite` travels as int32.
    return eigenvalues, eigenvectors, tf.cast(finite, tf.int32)

  @tf.function(autograph=False)
  def step(values, shared):
    strategy = strategy_ref()
    results = strategy.run(lambda rows: compute(rows, shared), args=(values,))
    # One gather per tensor: `strategy.gather` of a nested structure returns the first replica's values only
    # (TF 2.21, MirroredStrategy), silently.
    results = [strategy.gather(result, axis=0) for result in results]
    if what == "spectrum":
      results[2] = tf.cast(results[2], tf.bool)
    return tuple(results)

  return step


def agree_on_start(strategy, start):
  """The chief's `start` on every worker: the chief is the only one that reads `out`.

  Each replica of the chief contributes `(start, 1)`, every other one `(0, 0)`: the sum over all replicas (across
  workers too) divided by its count is the chief's `start`.
  """
  chief = strategy.extended.should_checkpoint
  mine = tf.constant([start, 1] if chief else [0, 0], tf.int64)
  values = strategy.experimental_distribute_values_from_function(lambda _: mine)
  total, chiefs = strategy.reduce(tf.distribute.ReduceOp.SUM, values, axis=None).numpy()
  return int(total // chiefs)


def split_across_replicas(strategy, rows):
  """`rows` (`[c, n]`, `c` a multiple of the replicas) as per-replica values: replica `i` gets the `i`-th slice."""
  per_replica = len(rows) // strategy.num_replicas_in_sync
  return strategy.experimental_distribute_values_from_function(
      lambda context: rows[context.replica_id_in_sync_group * per_replica:
                           (context.replica_id_in_sync_group + 1) * per_replica])
