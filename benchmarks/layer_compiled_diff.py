"""Which layer's pullback rounds differently when XLA compiles it: each layer with and without `jit_compile`.

    python benchmarks/layer_compiled_diff.py [--point 26] [--dtype float32]

Draws 64 points from `tfp_hessian.examples.research_flow()` (seed (3, 5), as `tests/test_execution.py` draws them),
takes one, and runs the sweep by hand: the base's derivatives, then every layer's pullback from the base side,
each called twice on the same incoming gradient and Hessian, as traced and inside a `tf.function(jit_compile=True)`.
Prints per layer `max |H_graph - H_xla| / max |H_graph|` and `max |H_graph|`; the sweep goes on with the graph's.

Session 32: at point 26, next to the box map's edge, the box map's pullback (tapes on its inverse) differed by
3.65e-5, every other layer by at most 6.4e-7 (float32).
"""

import argparse

import tensorflow as tf

from tfp_hessian import bases, events, examples, registry, sweep
from tfp_hessian.pullback import ComposedPullback


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--point", type=int, default=26)
  parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
  args = parser.parse_args()
  flow = examples.research_flow(dtype=tf.as_dtype(args.dtype))
  z = tf.constant(flow.sample(64, seed=(3, 5)).numpy()[args.point:args.point + 1])

  @tf.function
  def layer_differences(z):
    layers, base, _ = sweep._unwrap(flow, {})  # pylint: disable=protected-access
    pullbacks, y, layout = registry.pullbacks(layers, z, events.layout_of(z, 1))
    pullbacks = ComposedPullback(pullbacks).layers
    _, grad, hess = bases.log_prob_derivatives(base, y, layout, {})
    rows = []
    for pullback in reversed(pullbacks):
      graph_grad, graph_hess = pullback(grad, hess)
      _, xla_hess = tf.function(lambda g, h, p=pullback: p(g, h), jit_compile=True)(grad, hess)
      scale = tf.reduce_max(tf.abs(graph_hess))
      rows.append((type(pullback).__name__, tf.reduce_max(tf.abs(graph_hess - xla_hess)) / scale, scale))
      grad, hess = graph_grad, graph_hess
    return rows

  print(f"research_flow, point {args.point} of 64, {args.dtype}; layers from the base side")
  for name, difference, scale in layer_differences(z):
    print(f"  {name.numpy().decode():28s} compiled vs graph {difference.numpy():.2e}   max |H| {scale.numpy():.3g}")


if __name__ == "__main__":
  main()
