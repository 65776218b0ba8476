"""`tfp_hessian.spectrum`, its summaries, its figures (`tfp_hessian.plots`) and the demo's use of them."""

import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from matplotlib import collections as mpl_collections
from matplotlib import figure as mpl_figure

import tfp_hessian
from tfp_hessian import demo, plots

tfb, tfd = tfp.bijectors, tfp.distributions

DTYPES = (np.float64, np.float32)
RTOL = {np.float64: 1e-10, np.float32: 1e-4}


def _random_symmetric(rng, shape, dim, dtype=np.float64, decades=4.):
  """Symmetric `[*shape, dim, dim]` matrices, eigenvalues of both signs spread over `decades`."""
  q, _ = np.linalg.qr(rng.standard_normal((*shape, dim, dim)))
  values = rng.choice([-1., 1.], (*shape, dim)) * 10**rng.uniform(0, decades, (*shape, dim))
  matrices = q @ (values[..., :, None] * np.swapaxes(q, -1, -2))
  return (0.5 * (matrices + np.swapaxes(matrices, -1, -2))).astype(dtype)


def _numpy_stiff_first(matrices):
  """numpy's eigenvalues, reordered by decreasing |λ|."""
  values = np.linalg.eigvalsh(matrices.astype(np.float64))
  return np.take_along_axis(values, np.argsort(-np.abs(values), axis=-1, kind="stable"), axis=-1)


def _assert_decomposes(result, matrices, rtol):
  """Ordering, orthonormality, reconstruction and sign convention at every point."""
  values, vectors = np.asarray(result.eigenvalues, np.float64), np.asarray(result.eigenvectors, np.float64)
  assert np.all(np.asarray(result.finite))
  magnitude = np.abs(values)
  assert np.all(magnitude[..., :-1] >= magnitude[..., 1:]), f"not stiffest first: {values}"
  scale = np.max(np.abs(matrices), axis=(-2, -1), keepdims=True)
  rebuilt = vectors @ (values[..., :, None] * np.swapaxes(vectors, -1, -2))
  assert np.max(np.abs(rebuilt - matrices) / scale) <= rtol, "V diag(λ) Vᵀ != H"
  eye = np.eye(matrices.shape[-1])
  assert np.max(np.abs(np.swapaxes(vectors, -1, -2) @ vectors - eye)) <= 10 * rtol, "V is not orthonormal"
  largest = np.take_along_axis(vectors, np.argmax(np.abs(vectors), axis=-2)[..., None, :], axis=-2)
  assert np.all(largest > 0), "a column's largest component is not positive"
  np.testing.assert_allclose(values, _numpy_stiff_first(matrices), rtol=rtol, atol=rtol * np.max(scale))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(), (3,), (2, 3)], ids=str)
def test_random_symmetric_against_numpy(shape, dtype):
  matrices = _random_symmetric(np.random.default_rng(0), shape, 5, dtype)
  result = tfp_hessian.spectrum(matrices)
  assert result.eigenvalues.shape == (*shape, 5)
  assert result.eigenvectors.shape == (*shape, 5, 5)
  assert result.finite.shape == shape
  assert result.eigenvalues.dtype == dtype and result.eigenvectors.dtype == dtype
  _assert_decomposes(result, matrices.astype(np.float64), RTOL[dtype])


def test_eigenvectors_are_columns_matching_eigenvalues():
  hessian = np.diag([-0.01, -100., 3., -1.])
  result = tfp_hessian.spectrum(hessian)
  np.testing.assert_array_equal(result.eigenvalues.numpy(), [-100., 3., -1., -0.01])
  np.testing.assert_array_equal(result.eigenvectors.numpy(), np.eye(4)[:, [1, 2, 3, 0]])


def test_tensor_input_in_tf_function():
  matrices = _random_symmetric(np.random.default_rng(1), (4,), 3)
  compiled = tf.function(tfp_hessian.spectrum, autograph=False)
  result = compiled(tf.constant(matrices))
  _assert_decomposes(result, matrices, RTOL[np.float64])
  unknown = compiled.get_concrete_function(tf.TensorSpec([None, 3, 3], tf.float64))
  assert unknown(tf.constant(matrices)).eigenvalues.shape == (4, 3)


def test_one_by_one():
  result = tfp_hessian.spectrum(np.array([[[-2.]], [[5.]]]))
  np.testing.assert_array_equal(result.eigenvalues.numpy(), [[-2.], [5.]])
  np.testing.assert_array_equal(result.eigenvectors.numpy(), [[[1.]], [[1.]]])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_points_are_flagged_and_nan(bad):
  matrices = _random_symmetric(np.random.default_rng(2), (2, 3), 4)
  broken = matrices.copy()
  broken[1, 0, 2, 1] = bad
  result = tfp_hessian.spectrum(broken)
  np.testing.assert_array_equal(result.finite.numpy(), [[True, True, True], [False, True, True]])
  assert np.all(np.isnan(result.eigenvalues.numpy()[1, 0]))
  assert np.all(np.isnan(result.eigenvectors.numpy()[1, 0]))
  clean = tfp_hessian.spectrum(matrices)
  keep = result.finite.numpy()
  np.testing.assert_array_equal(result.eigenvalues.numpy()[keep], clean.eigenvalues.numpy()[keep])
  np.testing.assert_array_equal(result.eigenvectors.numpy()[keep], clean.eigenvectors.numpy()[keep])


def test_non_finite_points_skip_the_symmetry_check():
  broken = np.array([[[1., np.nan], [0., 1.]], [[-1., 0.5], [0.5, -2.]]])
  assert tfp_hessian.spectrum(broken).finite.numpy().tolist() == [False, True]


@pytest.mark.parametrize("shape", [(3,), (4, 3), (2, 3, 4), (2, 1, 3)], ids=str)
def test_non_square_raises_naming_the_shape(shape):
  with pytest.raises(ValueError, match=r"\[\*batch, D, D\].*got shape \(" + ", ".join(map(str, shape))):
    tfp_hessian.spectrum(np.zeros(shape))


def test_asymmetric_raises_naming_the_worst_entry():
  matrices = _random_symmetric(np.random.default_rng(3), (3,), 4)
  matrices[2, 3, 1] += 1e-3 * np.max(np.abs(matrices[2]))
  with pytest.raises(ValueError, match=r"not symmetric: at point \(2,\), entry \(1, 3\) is .* but \(3, 1\) is .*1e-06"):
    tfp_hessian.spectrum(matrices)
  tfp_hessian.spectrum(matrices, symmetry_rtol=1e-2)
  tfp_hessian.spectrum(matrices, symmetry_rtol=None)


def test_asymmetric_in_tf_function_raises_when_run():
  matrices = _random_symmetric(np.random.default_rng(4), (2,), 3)
  matrices[0, 0, 2] += 1.
  with pytest.raises(tf.errors.InvalidArgumentError, match="not symmetric"):
    tf.function(tfp_hessian.spectrum, autograph=False)(tf.constant(matrices))


def test_rounding_level_asymmetry_passes_in_float32():
  matrices = _random_symmetric(np.random.default_rng(5), (4,), 6, np.float32)
  matrices[:, 0, 1] *= 1 + 1e-7
  tfp_hessian.spectrum(matrices)


def test_integer_input_raises():
  with pytest.raises(TypeError, match="float32 or float64; got dtype int64"):
    tfp_hessian.spectrum(np.eye(3, dtype=np.int64))


def test_stiff_sloppy_split_by_rtol_and_count():
  hessian = np.array([np.diag([-1e4, -1e2, 5., -1e-1]), np.diag([-1., -0.5, -0.1, -1e-4])])
  result = tfp_hessian.spectrum(hessian)
  np.testing.assert_array_equal(tfp_hessian.stiff_sloppy_split(result, rtol=1e-3).numpy(),
                                [[True, True, False, False], [True, True, True, False]])
  np.testing.assert_array_equal(tfp_hessian.stiff_sloppy_split(result, rtol=1.).numpy(),
                                [[True, False, False, False], [True, False, False, False]])
  np.testing.assert_array_equal(tfp_hessian.stiff_sloppy_split(result, count=2).numpy(),
                                [[True, True, False, False]] * 2)
  assert not np.any(tfp_hessian.stiff_sloppy_split(result, count=0).numpy())
  assert np.all(tfp_hessian.stiff_sloppy_split(result, count=4).numpy())


@pytest.mark.parametrize("kwargs, match", [
    ({}, "exactly one of `rtol` and `count`"),
    ({"rtol": 0.1, "count": 1}, "exactly one of `rtol` and `count`"),
    ({"count": 5}, r"`count` must be an integer in \[0, D\] = \[0, 4\]; got 5"),
    ({"count": -1}, "`count` must be an integer"),
    ({"count": 1.5}, "`count` must be an integer"),
    ({"rtol": 0.}, r"`rtol` must be in \(0, 1\]; got 0.0"),
    ({"rtol": 2.}, r"`rtol` must be in \(0, 1\]"),
])
def test_stiff_sloppy_split_rejects(kwargs, match):
  result = tfp_hessian.spectrum(np.diag([-3., -2., -1., 1.]))
  with pytest.raises(ValueError, match=match):
    tfp_hessian.stiff_sloppy_split(result, **kwargs)


def test_helpers_reject_other_than_a_spectrum():
  with pytest.raises(TypeError, match="must be a tfp_hessian.Spectrum"):
    tfp_hessian.decades(np.eye(3))


def test_summaries_need_only_the_eigenvalues():
  result = tfp_hessian.spectrum(np.diag([-100., -1.]))._replace(eigenvectors=None)
  np.testing.assert_allclose(tfp_hessian.decades(result).numpy(), 2.)
  np.testing.assert_allclose(tfp_hessian.condition_number(result).numpy(), 100.)
  np.testing.assert_array_equal(tfp_hessian.stiff_sloppy_split(result, count=1).numpy(), [True, False])
  ax = mpl_figure.Figure().add_subplot()
  plots.eigenvalue_ladder(result, ax=ax)
  assert len(_ladder_segments(ax)) == 2


def test_summaries_of_known_spectra():
  hessian = np.array([np.diag([-1e3, -10., -1.]), np.diag([2., -2., 0.]), np.full((3, 3), np.nan)])
  result = tfp_hessian.spectrum(hessian)
  np.testing.assert_allclose(tfp_hessian.decades(result).numpy()[0], 3.)
  np.testing.assert_allclose(tfp_hessian.condition_number(result).numpy()[0], 1e3)
  assert tfp_hessian.decades(result).numpy()[1] == np.inf
  assert tfp_hessian.condition_number(result).numpy()[1] == np.inf
  assert np.isnan(tfp_hessian.decades(result).numpy()[2])
  assert not np.any(tfp_hessian.stiff_sloppy_split(result, rtol=1e-2).numpy()[2])
  assert not np.any(tfp_hessian.stiff_sloppy_split(result, count=3).numpy()[2])


def test_coordinate_contributions_columns_sum_to_one():
  matrices = _random_symmetric(np.random.default_rng(6), (2, 3), 5)
  contributions = tfp_hessian.coordinate_contributions(tfp_hessian.spectrum(matrices)).numpy()
  assert contributions.shape == (2, 3, 5, 5)
  assert np.all(contributions >= 0)
  np.testing.assert_allclose(contributions.sum(axis=-2), 1., rtol=1e-12)
  diagonal = tfp_hessian.coordinate_contributions(tfp_hessian.spectrum(np.diag([-1., -5., -3.]))).numpy()
  np.testing.assert_array_equal(diagonal, np.eye(3)[:, [1, 2, 0]])  # direction k lies along coordinate [1, 2, 0][k]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_flow_hessians_against_numpy(dtype):
  flow = demo.build_flow(dim=4, seed=3, dtype=tf.as_dtype(dtype))
  z = flow.sample(5, seed=(0, 3))
  hessian = tfp_hessian.log_prob_hessian(flow, z)
  result = tfp_hessian.spectrum(hessian)
  _assert_decomposes(result, hessian.numpy().astype(np.float64), RTOL[dtype])
  assert np.all(np.asarray(tfp_hessian.decades(result)) > 0)


# Figures. Each draws into its own `Figure` (no pyplot state) unless it tests the default axes.


def _ladder_segments(ax):
  (collection,) = [c for c in ax.collections if isinstance(c, mpl_collections.LineCollection)]
  return collection.get_segments()


def test_eigenvalue_ladder_draws_one_rung_per_finite_eigenvalue():
  hessian = np.array([np.diag([-100., -1., 0.5]), np.diag([-10., 0., -0.1]), np.full((3, 3), np.nan)])
  ax = mpl_figure.Figure().add_subplot()
  assert plots.eigenvalue_ladder(tfp_hessian.spectrum(hessian), ax=ax, labels=["a", "b", "c"]) is ax
  segments = _ladder_segments(ax)
  assert len(segments) == 5  # the zero eigenvalue and the non-finite point have no rung
  np.testing.assert_allclose(sorted(s[0, 1] for s in segments), [0.1, 0.5, 1., 10., 100.])
  assert ax.get_yscale() == "log"
  assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
  assert any(t.get_text() == "not finite" for t in ax.texts)
  assert [t.get_text() for t in ax.get_legend().get_texts()] == [r"$\lambda < 0$", r"$\lambda > 0$"]
  low, high = ax.get_ylim()
  assert low < 0.1 and high > 100


def test_eigenvalue_ladder_batch_is_flattened_and_labels_checked():
  result = tfp_hessian.spectrum(_random_symmetric(np.random.default_rng(7), (2, 3), 4))
  ax = mpl_figure.Figure().add_subplot()
  plots.eigenvalue_ladder(result, ax=ax)
  assert len(_ladder_segments(ax)) == 24
  assert [t.get_text() for t in ax.get_xticklabels()] == [f"z[{n}]" for n in range(6)]
  with pytest.raises(ValueError, match=r"one entry per point \(6\); got 2"):
    plots.eigenvalue_ladder(result, ax=mpl_figure.Figure().add_subplot(), labels=["a", "b"])


def test_eigenvalue_ladder_default_axes():
  pyplot = pytest.importorskip("matplotlib.pyplot")
  pyplot.switch_backend("Agg")
  try:
    ax = plots.eigenvalue_ladder(tfp_hessian.spectrum(np.diag([-2., -1.])))
    assert ax is pyplot.gca()
  finally:
    pyplot.close("all")


def _flow_2d():
  return tfd.TransformedDistribution(
      tfd.MultivariateNormalDiag(tf.zeros(2, tf.float64)),
      tfb.Chain([tfb.SinhArcsinh(tf.constant([0.5, -0.3], tf.float64), tf.constant([0.8, 1.2], tf.float64)),
                 tfb.ScaleMatvecTriL(tf.constant([[1., 0.], [1.5, 0.3]], tf.float64))]))


def test_density_with_directions_draws_segments_of_length_one_over_sqrt_lambda():
  flow = _flow_2d()
  points = np.array([[0.2, 0.1], [1.0, 1.5], [-0.5, -1.]])
  hessians = tfp_hessian.log_prob_hessian(flow, points).numpy()
  ax = mpl_figure.Figure().add_subplot()
  assert plots.density_with_directions(flow, points, ax=ax, extent=(-2, 2, -3, 3), grid_size=20) is ax
  stiff, sloppy = [c for c in ax.collections if isinstance(c, mpl_collections.LineCollection)][-2:]
  values = tfp_hessian.spectrum(hessians).eigenvalues.numpy()
  for collection, k in ((stiff, 0), (sloppy, 1)):
    segments = np.array(collection.get_segments())
    np.testing.assert_allclose(segments.mean(axis=1), points, atol=1e-12)
    lengths = np.linalg.norm(segments[:, 1] - segments[:, 0], axis=-1)
    np.testing.assert_allclose(lengths, 2 / np.sqrt(np.abs(values[:, k])), rtol=1e-12)
  assert ax.get_xlim() == (-2, 2) and ax.get_ylim() == (-3, 3)
  # Given Hessians are used as given; a default extent holds the points.
  ax = mpl_figure.Figure().add_subplot()
  plots.density_with_directions(flow, points[0], hessians=hessians[:1], ax=ax, grid_size=20)
  (xmin, xmax), (ymin, ymax) = ax.get_xlim(), ax.get_ylim()
  assert xmin < points[0, 0] < xmax and ymin < points[0, 1] < ymax


def test_density_with_directions_rejects_bad_input():
  ax = mpl_figure.Figure().add_subplot()
  flow_3d = tfd.MultivariateNormalDiag(tf.zeros(3, tf.float64))
  with pytest.raises(ValueError, match="event shape \\[2\\]"):
    plots.density_with_directions(flow_3d, np.zeros([1, 3]), ax=ax)
  with pytest.raises(ValueError, match="`points` must have shape"):
    plots.density_with_directions(_flow_2d(), np.zeros([4, 3]), ax=ax)
  with pytest.raises(ValueError, match="`hessians` must have shape"):
    plots.density_with_directions(_flow_2d(), np.zeros([2, 2]), hessians=np.zeros([3, 2, 2]), ax=ax)


def test_plots_without_matplotlib_say_what_to_install(monkeypatch):
  for name in [name for name in sys.modules if name == "matplotlib" or name.startswith("matplotlib.")]:
    monkeypatch.delitem(sys.modules, name)
  monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
  with pytest.raises(ImportError, match=r"pip install tfp_hessian\[plot\]"):
    plots.eigenvalue_ladder(tfp_hessian.spectrum(np.eye(2)))


# The demo's stiff/sloppy summary and its figure.


# The demo's stiff and sloppy summary and its ladder figure: `tests/test_demo.py`, in its one in-process run.


def test_demo_figure_without_matplotlib_exits_2_before_running(monkeypatch, capsys):
  monkeypatch.setattr(demo.importlib.util, "find_spec", lambda name: None)
  monkeypatch.setattr(demo, "run_demo", lambda **kwargs: pytest.fail("the demo ran"))
  args = type("Args", (), dict(dim=3, num_points=2, seed=0, repeats=1, figure="ladder.png"))()
  assert demo.run(args) == 2
  assert "pip install tfp_hessian[plot]" in capsys.readouterr().err
