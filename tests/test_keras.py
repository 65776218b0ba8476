"""The Keras callbacks, in real `Model.fit` runs: what reaches `logs`, `History`, `spectra` and TensorBoard.

Each test trains a tiny flow for a few epochs on a small synthetic data set, then checks the callback's records
against the spectrum computed directly from the trained flow.
"""

import glob

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

import tfp_hessian
from tfp_hessian.keras import HessianSpectrumCallback, Keras3HessianSpectrumCallback

tfb = tfp.bijectors
tfd = tfp.distributions

D = 3
KEYS = ("hessian/stiffest", "hessian/sloppiest", "hessian/decades", "hessian/condition_number",
        "hessian/finite_fraction")


def _data(num=128, seed=0):
  """Correlated, skewed 3-D data: something for a flow to learn."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(num, D)) @ np.array([[1., 0., 0.], [1.5, 0.4, 0.], [0., 0.8, 0.2]])
  x[:, 2] += 0.5 * x[:, 0] ** 2
  return x.astype(np.float32)


class _LogProb(tf_keras.layers.Layer):
  """A flow as a tf-keras layer: tracks the flow's variables, returns `log_prob` of its input."""

  def __init__(self, flow, made, **kwargs):
    super().__init__(**kwargs)
    self.flow = flow
    self._made = made  # tracked, so its kernels are trained

  def call(self, x):
    return self.flow.log_prob(x)


def _tf_keras_maf():
  """`(model, flow)`: a MAF (tiny MADE) and a trainable shift, fit by maximum likelihood."""
  tf_keras.utils.set_random_seed(0)
  made = tfb.AutoregressiveNetwork(params=2, hidden_units=[8], activation="tanh")
  shift = tf.Variable(tf.zeros(D), name="shift")
  flow = tfd.TransformedDistribution(tfd.MultivariateNormalDiag(tf.zeros(D)), tfb.Chain(
      [tfb.MaskedAutoregressiveFlow(made), tfb.Permute([2, 0, 1]), tfb.Shift(shift)]))
  x = tf_keras.Input([D])
  model = tf_keras.Model(x, _LogProb(flow, made)(x))
  model.compile(tf_keras.optimizers.Adam(0.02), loss=lambda _, log_prob: -log_prob)
  return model, flow


class _Probe:
  """A later callback's view: the keys of `logs` it sees at each epoch's end."""

  def __init__(self):
    self.seen = {}

  def on_epoch_end(self, epoch, logs=None):
    self.seen[epoch] = {key: logs[key] for key in logs if key.startswith("hessian/")}


class _TfKerasProbe(_Probe, tf_keras.callbacks.Callback):
  pass


def _events(log_dir):
  """`{tag: [(step, value)]}` from the TensorBoard event files under `log_dir`."""
  events = {}
  files = glob.glob(str(log_dir / "events.out.tfevents.*"))
  assert files, f"no TensorBoard event file in {log_dir}"
  for path in files:
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        plugin = value.metadata.plugin_data.plugin_name
        events.setdefault(value.tag, []).append((event.step, plugin, tf.make_ndarray(value.tensor)))
  return events


def _assert_summary_of(history_values, spectrum):
  """Logged scalars are the medians over points of the library's per-point quantities."""
  magnitude = np.abs(spectrum.eigenvalues.numpy())
  expected = {
      "hessian/stiffest": np.median(magnitude[:, 0]),
      "hessian/sloppiest": np.median(magnitude[:, -1]),
      "hessian/decades": np.median(tfp_hessian.decades(spectrum).numpy()),
      "hessian/condition_number": np.median(tfp_hessian.condition_number(spectrum).numpy()),
      "hessian/finite_fraction": 1.,
  }
  for key, value in expected.items():
    np.testing.assert_allclose(history_values[key], value, rtol=1e-4, err_msg=key)


def test_tf_keras_fit_logs_spectra_every_n_epochs(tmp_path):
  model, flow = _tf_keras_maf()
  data = _data()
  points = data[:8]
  callback = HessianSpectrumCallback(flow, points=points, every_n_epochs=2, log_dir=tmp_path)
  probe = _TfKerasProbe()
  history = model.fit(data, np.zeros(len(data)), batch_size=64, epochs=4, verbose=0,
                      callbacks=[callback, probe])

  # Logged at the end of epochs 1 and 3 only, finite, and seen by the callback after it.
  for key in KEYS:
    assert len(history.history[key]) == 2, key
    assert np.all(np.isfinite(history.history[key])), key
  assert sorted(probe.seen) == [0, 1, 2, 3]
  assert [sorted(probe.seen[epoch]) for epoch in (0, 2)] == [[], []]
  for k, epoch in enumerate((1, 3)):
    assert probe.seen[epoch] == {key: history.history[key][k] for key in KEYS}

  # Before training, then after epochs 1 and 3; the last one is the trained flow's spectrum.
  assert [epoch for epoch, _ in callback.spectra] == [-1, 1, 3]
  direct = tfp_hessian.spectrum(tfp_hessian.log_prob_hessian(flow, points))
  last = callback.spectra[-1][1]
  assert last.eigenvalues.shape == (8, D) and last.eigenvectors.shape == (8, D, D) and last.finite.all()
  np.testing.assert_allclose(last.eigenvalues, direct.eigenvalues.numpy(), rtol=1e-5)
  np.testing.assert_allclose(np.abs(last.eigenvectors), np.abs(direct.eigenvectors.numpy()), atol=1e-4)
  _assert_summary_of({key: values[-1] for key, values in history.history.items()}, direct)
  assert not np.allclose(callback.spectra[0][1].eigenvalues, last.eigenvalues, rtol=1e-2)  # it trained
  assert callback._compute.experimental_get_tracing_count() == 1  # pylint: disable=protected-access

  # TensorBoard: every scalar at every record (epoch as step), and the histogram of log10 |λ|.
  events = _events(tmp_path)
  for key in KEYS:
    assert [(step, plugin) for step, plugin, _ in events[key]] == [(-1, "scalars"), (1, "scalars"),
                                                                    (3, "scalars")]
    np.testing.assert_allclose([value for _, _, value in events[key][1:]], history.history[key], rtol=1e-6)
  histograms = events["hessian/log10_abs_eigenvalues"]
  assert [(step, plugin) for step, plugin, _ in histograms] == [(-1, "histograms"), (1, "histograms"),
                                                                 (3, "histograms")]
  buckets = histograms[-1][2]  # [bins, 3]: left edge, right edge, count
  assert buckets[:, 2].sum() == 8 * D
  log_magnitude = np.log10(np.abs(last.eigenvalues))
  np.testing.assert_allclose([buckets[0, 0], buckets[-1, 1]], [log_magnitude.min(), log_magnitude.max()],
                             rtol=1e-5, atol=1e-6)


class _GaussianFlow(keras.Model):
  """A Keras 3 affine flow `z = L ω + b`: its Hessian is `-(L Lᵀ)⁻¹` at every point, samples or not."""

  def __init__(self):
    super().__init__(name="gaussian_flow")
    self.shift = self.add_weight(shape=[D], initializer="zeros", name="shift")
    self.scale = self.add_weight(shape=[D, D], initializer="identity", name="scale")

  def flow(self):
    # Built from the variables on every call: the callable form of the callback's `distribution`.
    scale_tril = tf.linalg.band_part(tf.convert_to_tensor(self.scale), -1, 0)
    return tfd.TransformedDistribution(
        tfd.MultivariateNormalDiag(tf.zeros(D)), tfb.Chain([tfb.Shift(self.shift), tfb.ScaleMatvecTriL(scale_tril)]))

  def call(self, x):
    return self.flow().log_prob(x)


class _Keras3Probe(_Probe, keras.callbacks.Callback):
  pass


def test_keras3_fit_with_fresh_samples(tmp_path):
  keras.utils.set_random_seed(0)
  model = _GaussianFlow()
  model.compile(keras.optimizers.Adam(0.05), loss=lambda _, log_prob: -log_prob)
  data = _data()
  callback = Keras3HessianSpectrumCallback(model.flow, num_samples=5, resample=True, seed=3, log_dir=tmp_path)
  probe = _Keras3Probe()
  history = model.fit(data, np.zeros(len(data)), batch_size=64, epochs=2, verbose=0, callbacks=[callback, probe])

  for key in KEYS:
    assert len(history.history[key]) == 2 and np.all(np.isfinite(history.history[key])), key
  assert probe.seen[1] == {key: history.history[key][-1] for key in KEYS}
  assert not np.allclose(model.scale.numpy(), np.eye(D))  # it trained
  assert [epoch for epoch, _ in callback.spectra] == [-1, 0, 1]
  assert callback.spectra[-1][1].eigenvalues.shape == (5, D)
  # The affine flow's Hessian does not depend on the point: every sample has the trained flow's -(L Lᵀ)⁻¹.
  scale_tril = tf.linalg.band_part(tf.convert_to_tensor(model.scale), -1, 0)
  exact = tfp_hessian.spectrum(tf.tile(-tf.linalg.inv(scale_tril @ tf.transpose(scale_tril))[tf.newaxis], [5, 1, 1]))
  np.testing.assert_allclose(callback.spectra[-1][1].eigenvalues, exact.eigenvalues.numpy(), rtol=1e-4)
  _assert_summary_of({key: values[-1] for key, values in history.history.items()}, exact)
  assert callback._compute.experimental_get_tracing_count() == 1  # pylint: disable=protected-access
  assert sorted(_events(tmp_path)) == sorted(KEYS + ("hessian/log10_abs_eigenvalues",))


def test_fixed_seed_reuses_the_base_draws():
  flow = tfd.TransformedDistribution(tfd.MultivariateNormalDiag(tf.zeros(D)), tfb.Softplus())
  same = HessianSpectrumCallback(flow, num_samples=4, seed=1, keep_eigenvectors=False)
  fresh = HessianSpectrumCallback(flow, num_samples=4, seed=1, resample=True)
  np.testing.assert_array_equal(same.compute_spectrum(0).eigenvalues, same.compute_spectrum(5).eigenvalues)
  assert not np.allclose(fresh.compute_spectrum(0).eigenvalues, fresh.compute_spectrum(5).eigenvalues)


def test_which_epochs_are_recorded():
  flow = tfd.TransformedDistribution(tfd.MultivariateNormalDiag(tf.zeros(D)), tfb.Softplus())
  callback = HessianSpectrumCallback(flow, num_samples=2, every_n_epochs=3, initial=False, keep_eigenvectors=False)
  logs = {}
  callback.on_train_begin()
  for epoch in range(7):
    callback.on_epoch_begin(epoch)
    logs[epoch] = {"loss": 1.}
    callback.on_epoch_end(epoch, logs[epoch])
  callback.on_train_end()
  assert [epoch for epoch, _ in callback.spectra] == [2, 5]
  assert [epoch for epoch in logs if set(KEYS) <= set(logs[epoch])] == [2, 5]
  assert all(spectrum.eigenvectors is None and spectrum.eigenvalues.shape == (2, D) for _, spectrum in callback.spectra)


def test_summary_skips_points_off_the_support():
  flow = tfd.TransformedDistribution(tfd.MultivariateNormalDiag(tf.zeros(D)), tfb.Exp())
  points = np.array([[1., 2., 3.], [-1., 2., 3.], [0.5, 0.5, 4.]], np.float32)  # the second is off the support
  callback = HessianSpectrumCallback(flow, points=points)
  spectrum = callback.compute_spectrum()
  np.testing.assert_array_equal(spectrum.finite, [True, False, True])
  summary = callback.summarize(spectrum)
  assert summary["hessian/finite_fraction"] == pytest.approx(2 / 3)
  np.testing.assert_allclose(summary["hessian/stiffest"], np.median(np.abs(spectrum.eigenvalues[[0, 2], 0])))
  nothing = callback.summarize(spectrum._replace(finite=np.zeros(3, bool)))
  assert nothing["hessian/finite_fraction"] == 0 and np.isnan(nothing["hessian/decades"])


_FLOW = tfd.TransformedDistribution(tfd.MultivariateNormalDiag(tf.zeros(D)), tfb.Softplus())


@pytest.mark.parametrize("kwargs, match", [
    (dict(), "exactly one of `points`"),
    (dict(points=np.ones((2, D), np.float32), num_samples=2), "exactly one of `points`"),
    (dict(num_samples=2, every_n_epochs=0), "every_n_epochs"),
    (dict(num_samples=2, every_n_epochs=1.5), "every_n_epochs"),
    (dict(num_samples=0), "num_samples"),
    (dict(points=np.ones((2, D + 1), np.float32)), "event size"),
], ids=["neither", "both", "every_n_epochs=0", "every_n_epochs=1.5", "num_samples=0", "wrong event size"])
def test_bad_input_raises_at_construction(kwargs, match):
  with pytest.raises(ValueError, match=match):
    HessianSpectrumCallback(_FLOW, **kwargs)
