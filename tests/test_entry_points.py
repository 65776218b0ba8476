"""Every entry point on structured and conditional flows: the same flattening and kwargs as `log_prob_hessian`.

The flows come from the one registry (`test_flows.FLOWS`); each entry point is checked against nested tapes on
the flat event, or against `log_prob_hessian`, which `test_flows.py` checks against both references.
"""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

import tfp_hessian
from tfp_hessian import reference
from tfp_hessian.keras import HessianSpectrumCallback

from cases import RTOL, assert_close
from test_flows import make_flow

tfb = tfp.bijectors
tfd = tfp.distributions

# Structured events, conditions per point, one condition for all points, a user-written bijector.
NAMES = ["Restructure into a dict, JointMap with RealNVP", "JointDistributionNamed (hierarchical)",
         "matrix events: Sample(Normal, [3, 2])", "build_affine_surrogate_posterior (DeferredModule)",
         "conditional MAFs in a Chain, [N, C] conditions", "conditional MAF, one [C] condition",
         "research-style: MAF stages, BatchNorm, box map, shear"]


def _flat_size(distribution, z):
  return tfp_hessian.flatten_event(distribution, z).shape[-1]


@pytest.mark.parametrize("name", NAMES)
def test_hvp_and_hessian_operator(name):
  distribution, z, kwargs = make_flow(name, np.float64)
  expected = reference.tape_hessian(distribution, z, **kwargs)
  v = tf.constant(np.random.default_rng(0).normal(size=expected.shape[:-1]))
  product = tfp_hessian.log_prob_hvp(distribution, z, v, **kwargs)
  assert_close(product, tf.linalg.matvec(expected, v), RTOL[np.float64], 1, what="H v")
  points, matvec = tfp_hessian.hvp.hessian_operator(distribution, z, **kwargs)
  assert points.shape == v.shape
  assert_close(matvec(v), tf.linalg.matvec(expected, v), RTOL[np.float64], 1, what="hessian_operator")


@pytest.mark.parametrize("which", ["stiff", "sloppy"])
@pytest.mark.parametrize("name", NAMES[:5])
def test_top_eigenpairs(name, which):
  distribution, z, kwargs = make_flow(name, np.float64)
  dense = tfp_hessian.spectrum(tfp_hessian.log_prob_hessian(distribution, z, **kwargs))
  size = _flat_size(distribution, z)
  k = min(2, size)
  pairs = tfp_hessian.top_eigenpairs(distribution, z, k=k, which=which, **kwargs)
  assert pairs.eigenvectors.shape[-2:] == (size, k)
  assert np.all(pairs.converged)
  expected = dense.eigenvalues[..., :k] if which == "stiff" else dense.eigenvalues[..., -k:]
  assert_close(pairs.eigenvalues, expected, 1e-8, 1, what="eigenvalues")


def _rows(tree, rows):
  return tf.nest.map_structure(lambda t: tf.concat([t] * rows, axis=0), tree)


@pytest.mark.parametrize("name", ["JointDistributionNamed (hierarchical)", "matrix events: Sample(Normal, [3, 2])",
                                  "conditional MAFs in a Chain, [N, C] conditions",
                                  "conditional MAF, one [C] condition"])
def test_hessians_in_chunks(name, tmp_path):
  """Structured points and per-point conditions are chunked together (2 points a chunk, the last one padded);
  the results equal one sweep over all points, in memory and in resumable files."""
  distribution, z, kwargs = make_flow(name, np.float64)
  z = _rows(z, 3)  # 9 points: chunks of 2, 2, 2, 2, 1
  per_point = name.endswith("[N, C] conditions")
  if per_point:
    kwargs = tf.nest.map_structure(lambda c: tf.concat([c] * 3, axis=0), kwargs)
  expected = tfp_hessian.log_prob_and_derivatives(distribution, z, **kwargs)
  points = tf.nest.map_structure(lambda t: t.numpy(), z)
  derivatives = tfp_hessian.hessians_in_chunks(distribution, points, what="derivatives", chunk_size=2,
                                               progress=False, **kwargs)
  for actual, wanted in zip(derivatives, expected):
    assert_close(actual, wanted, 1e-12, wanted.shape.rank - 1 or 1)
  on_disk = tfp_hessian.hessians_in_chunks(distribution, points, chunk_size=4, out=tmp_path / "run", progress=False,
                                           **kwargs)
  assert_close(on_disk, expected.hessian, 1e-12)
  if per_point:
    # Other conditions for the same points are another computation, and a resumed run notices.
    other = tf.nest.map_structure(lambda c: c + 1., kwargs)
    with pytest.raises(ValueError, match=r"the first 9 points differ"):
      tfp_hessian.hessians_in_chunks(distribution, points, chunk_size=4, out=tmp_path / "run", progress=False,
                                     **other)


def test_hessians_in_chunks_from_a_dataset_of_structures():
  distribution, z, _ = make_flow("JointDistributionNamed (hierarchical)", np.float64)
  dataset = tf.data.Dataset.from_tensor_slices(z)
  expected = tfp_hessian.log_prob_hessian(distribution, z)
  for points in (dataset, dataset.batch(2)):
    assert_close(tfp_hessian.hessians_in_chunks(distribution, points, chunk_size=2, progress=False), expected, 1e-12)


@pytest.mark.parametrize("name", ["conditional MAF, one [C] condition", "JointDistributionNamed (hierarchical)"])
def test_sample_and_log_prob_hessian_with_kwargs(name):
  distribution, _, kwargs = make_flow(name, np.float64)
  z, hessian = tfp_hessian.sample_and_log_prob_hessian(distribution, 3, seed=(4, 5), **kwargs)
  copy = tf.nest.map_structure(lambda t: tf.constant(t.numpy()), z)
  assert_close(hessian, reference.tape_hessian(distribution, copy, **kwargs), RTOL[np.float64])


def test_transformed_distribution_methods_take_kwargs():
  distribution, z, kwargs = make_flow("conditional MAFs in a Chain, [N, C] conditions", np.float64)
  flow = tfp_hessian.TransformedDistribution(distribution.distribution, distribution.bijector)
  gradient, hessian = reference.tape_derivatives(distribution, z, **kwargs)
  assert_close(flow.log_prob_hessian(z, **kwargs), hessian, RTOL[np.float64])
  assert_close(flow.log_prob_and_derivatives(z, **kwargs).gradient, gradient, RTOL[np.float64], 1)


def test_keras_callback_on_a_conditional_flow_and_named_parameters():
  """The callback records spectra of a conditional flow (its condition in `log_prob_kwargs`) and of a posterior
  over named parameters, during a real `fit`."""
  conditional, z, kwargs = make_flow("conditional MAF, one [C] condition", np.float64)
  named, named_z, _ = make_flow("JointDistributionNamed (hierarchical)", np.float64)
  callbacks = [HessianSpectrumCallback(conditional, points=z, log_prob_kwargs=kwargs, initial=False),
               HessianSpectrumCallback(named, num_samples=3, initial=False)]
  model = tf_keras.Sequential([tf_keras.layers.Dense(1, dtype="float64")])
  model.compile(optimizer="sgd", loss="mse")
  model.fit(np.ones((4, 2)), np.ones((4, 1)), epochs=2, verbose=0, callbacks=callbacks)
  epoch, spectrum = callbacks[0].spectra[-1]
  assert epoch == 1
  expected = tfp_hessian.spectrum(tfp_hessian.log_prob_hessian(conditional, z, **kwargs))
  assert_close(spectrum.eigenvalues, expected.eigenvalues, 1e-10, 1)
  _, named_spectrum = callbacks[1].spectra[-1]
  assert named_spectrum.eigenvalues.shape == (3, _flat_size(named, named_z))


def test_event_names_follow_the_flat_order():
  distribution, z, _ = make_flow("build_affine_surrogate_posterior (DeferredModule)", np.float64)
  names = tfp_hessian.event_names(distribution)
  assert names == ["c[0, 0]", "c[0, 1]", "c[1, 0]", "c[1, 1]", "scale", "w[0]", "w[1]"]
  flat = tfp_hessian.flatten_event(distribution, z)
  back = tfp_hessian.unflatten_event(distribution, flat)
  for part, again in zip(tf.nest.flatten(z), tf.nest.flatten(back)):
    np.testing.assert_array_equal(part, again)
  np.testing.assert_array_equal(flat[:, 4], z["scale"])
  np.testing.assert_array_equal(flat[:, 2], z["c"][:, 1, 0])


def test_joint_map_pullback_and_its_inverse_map():
  """A `JointMap` of an elementwise, a composed and a coupling part: its block pullback's Jacobian against tapes on
  the flat map, and `invert` undoing the pullback (cross blocks included) on random derivatives."""
  distribution, z, _ = make_flow("Restructure into a dict, JointMap with RealNVP", np.float64)
  joint_map = distribution.bijector.bijectors[0]
  y = tf.nest.map_structure(tf.identity, z)
  pullback = tfp_hessian.bijectors.hessian_pullback(joint_map, y, event_ndims={"scale": 1, "w": 2, "z": 1})
  assert type(pullback).__name__ == "BlockPullback"
  layout = tfp_hessian.events.layout_of(y, {"scale": 1, "w": 2, "z": 1})
  flat = layout.flatten(y)
  with tf.GradientTape() as tape:
    tape.watch(flat)
    x = joint_map.inverse(layout.unflatten(flat))
    flat_x = pullback.x_layout.flatten(x)
  assert_close(pullback.jacobian(), tape.batch_jacobian(flat_x, flat), RTOL[np.float64])
  rng = np.random.default_rng(2)
  grad = tf.constant(rng.normal(size=flat.shape))
  hess = rng.normal(size=flat.shape + flat.shape[-1:])
  hess = tf.constant(hess + np.swapaxes(hess, -1, -2))
  back_grad, back_hess = pullback.invert(*pullback(grad, hess))
  assert_close(back_grad, grad, 1e-8, 1, what="gradient round trip")
  assert_close(back_hess, hess, 1e-8, 2, what="Hessian round trip")
