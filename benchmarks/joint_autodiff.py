"""Where a JointDistribution with dependent parts spends its time: ours, nested tapes, ours without symmetrizing.

    python benchmarks/joint_autodiff.py

With no bijector and parts that depend on each other, the whole Hessian is nested tapes on `log_prob`, in ours as
in the reference; ours then symmetrizes, `(H + Hᵀ)/2`, so that every Hessian of the package is exactly symmetric.
This times the three side by side (interleaved, median of 300 rounds, float32, `tfp_hessian.examples.named_model`)
at N = 16 and 1024 points, to show what that pass costs.
"""

import statistics
import time

import tensorflow as tf

from tfp_hessian import bases, events, examples, reference, sweep


def main():
  model = examples.named_model(dtype=tf.float32)
  layout = events.layout_of_distribution(model)
  for num_points in (16, 1024):
    z = tf.nest.map_structure(lambda t: tf.constant(t.numpy()), model.sample(num_points, seed=(1, 2)))
    calls = {
        "nested tapes": tf.function(lambda z: reference.tape_hessian(model, z), autograph=False),
        "ours": tf.function(lambda z: sweep.sweep(model, z, layout).hessian, autograph=False),
        "ours without (H + Hᵀ)/2": tf.function(lambda z: bases.log_prob_derivatives(model, z, layout)[2],
                                              autograph=False),
    }
    times = {name: [] for name in calls}
    for call in calls.values():
      call(z)
    for _ in range(300):
      for name, call in calls.items():
        start = time.perf_counter()
        call(z).numpy()
        times[name].append(time.perf_counter() - start)
    print(f"N = {num_points}: " + ", ".join(f"{name} {1e3 * statistics.median(values):.2f} ms"
                                             for name, values in times.items()))


if __name__ == "__main__":
  main()
