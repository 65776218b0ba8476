"""Keras callbacks: the Hessian spectrum of a flow, tracked while it trains.

Every `every_n_epochs` epochs the callback takes the Hessians `∇²_z log q(z)` of the flow being trained, at fixed
points or at fresh samples of it, eigendecomposes them (`tfp_hessian.spectrum`) and reports, as medians over the
points,

- `hessian/stiffest`: the largest `|λ|` (the stiffest direction's curvature);
- `hessian/sloppiest`: the smallest `|λ|` (the sloppiest direction's);
- `hessian/decades`: `log10(|λ|max / |λ|min)`, how many decades the spectrum spans (`tfp_hessian.decades`);
- `hessian/condition_number`: `|λ|max / |λ|min` (`tfp_hessian.condition_number`);
- `hessian/finite_fraction`: the fraction of points whose Hessian is finite (the medians are over those).

These go into the epoch's `logs`, so `History` (`model.fit(...).history`), `CSVLogger`, `EarlyStopping` and the
progress bar see them like any metric, and into TensorBoard event files when `log_dir` is given (the same
scalars, and a histogram of `log10 |λ|` over all points and directions). The full spectra are kept in
`callback.spectra`.

Two classes share one implementation:

- `HessianSpectrumCallback` is a `tf_keras.callbacks.Callback`, for models built with tf-keras, which is what
  TFP's Keras layers and `tfb.AutoregressiveNetwork` are;
- `Keras3HessianSpectrumCallback` is a `keras.callbacks.Callback`, for Keras 3 models (`tf.keras` in
  TensorFlow ≥ 2.16).

>>> callback = HessianSpectrumCallback(flow, num_samples=64, every_n_epochs=5, log_dir="logs/hessian")
>>> history = model.fit(data, epochs=50, callbacks=[callback])
>>> history.history["hessian/decades"]            # one value per 5 epochs
>>> epoch, spectrum = callback.spectra[-1]        # Spectrum(eigenvalues [64, D], eigenvectors, finite)
"""

import numbers

import keras
import numpy as np
import tensorflow as tf
import tf_keras
import tensorflow_probability as tfp
from tensorflow.core.framework import summary_pb2

from tfp_hessian import private_api, sampling, sweep
from tfp_hessian.stiff_sloppy import Spectrum, spectrum as eigendecomposition

__all__ = ["HessianSpectrumCallback", "Keras3HessianSpectrumCallback"]

_HISTOGRAM_BINS = 30


class _HessianSpectrumMonitor:
  """The callbacks' implementation, independent of which Keras calls it (see `HessianSpectrumCallback`)."""

  def __init__(self, distribution, points=None, num_samples=None, every_n_epochs=1, seed=None, resample=False,
               initial=True, log_dir=None, prefix="hessian/", keep_eigenvectors=True, log_prob_kwargs=None):
    super().__init__()
    _check_arguments(points, num_samples, every_n_epochs, seed)
    self.every_n_epochs = int(every_n_epochs)
    self.initial = initial
    self.log_dir = None if log_dir is None else str(log_dir)
    self.prefix = prefix
    self.keep_eigenvectors = keep_eigenvectors
    self.spectra = []
    self._resample = resample
    self._seed = int(np.random.SeedSequence(seed).generate_state(1)[0] >> 1)  # a non-negative int32
    self._tensorboard = None
    self._before_training = False
    self._compute = _traced_spectra(distribution, points, num_samples, dict(log_prob_kwargs or {}))

  # -- Keras hooks ---------------------------------------------------------------------------------------------

  def on_train_begin(self, logs=None):
    del logs
    if self.log_dir is not None and self._tensorboard is None:
      self._tensorboard = _TensorBoardLog(self.log_dir)
    self._before_training = self.initial

  def on_epoch_begin(self, epoch, logs=None):
    del logs
    if self._before_training:
      # Recorded here rather than in `on_train_begin`, which is not told `fit`'s `initial_epoch`.
      self._before_training = False
      self._record(epoch - 1)

  def on_epoch_end(self, epoch, logs=None):
    if (epoch + 1) % self.every_n_epochs == 0:
      summary = self._record(epoch)
      if logs is not None:
        logs.update(summary)

  def on_train_end(self, logs=None):
    del logs
    if self._tensorboard is not None:
      self._tensorboard.close()
      self._tensorboard = None

  # -- implementation ------------------------------------------------------------------------------------------

  def compute_spectrum(self, epoch=0):
    """The `Spectrum` (numpy arrays) the callback would record at the end of `epoch`, without recording it."""
    seed = [self._seed, epoch + 1 if self._resample else 0]
    return Spectrum(*(np.asarray(t) for t in self._compute(tf.constant(seed, tf.int32))))

  def summarize(self, spectrum):
    """The scalars logged for a `Spectrum`: `{prefix + name: float}` (see the module docstring).

    Per point the same numbers as `tfp_hessian.decades` and `tfp_hessian.condition_number`, then medians.
    """
    return {self.prefix + name: float(value) for name, value in _medians(spectrum).items()}

  def _record(self, epoch):
    spectrum = self.compute_spectrum(epoch)
    summary = self.summarize(spectrum)
    if not self.keep_eigenvectors:
      spectrum = spectrum._replace(eigenvectors=None)
    self.spectra.append((epoch, spectrum))
    if self._tensorboard is not None:
      self._tensorboard.write(epoch, summary, self.prefix + "log10_abs_eigenvalues", spectrum)
    return summary


class _TensorBoardLog:
  """TensorBoard event files in `log_dir`, in TensorBoard's own formats (TensorBoard need not be installed)."""

  def __init__(self, log_dir):
    self._writer = tf.summary.create_file_writer(log_dir)

  def write(self, epoch, summary, histogram_tag, spectrum):
    """The scalars of `summary` and, under `histogram_tag`, a histogram of `log10 |λ|`, at step `epoch`."""
    with self._writer.as_default(step=epoch):
      for tag, value in summary.items():
        tf.summary.write(tag, tf.constant(value, tf.float32), metadata=_metadata("scalars"))
      buckets = _log10_histogram(spectrum)
      if buckets is not None:
        tf.summary.write(histogram_tag, tf.constant(buckets, tf.float64), metadata=_metadata("histograms"))
    self._writer.flush()

  def close(self):
    self._writer.close()


def _check_arguments(points, num_samples, every_n_epochs, seed):
  """Refuses what the callbacks cannot run with, naming the argument, before anything is traced."""
  if (points is None) == (num_samples is None):
    raise ValueError("Give exactly one of `points` (fixed points) and `num_samples` (fresh samples of the "
                     f"flow); got points={'None' if points is None else 'an array'}, num_samples={num_samples!r}.")
  if not _is_int(every_n_epochs) or every_n_epochs < 1:
    raise ValueError(f"`every_n_epochs` must be an integer >= 1; got {every_n_epochs!r}.")
  if num_samples is not None and (not _is_int(num_samples) or num_samples < 1):
    raise ValueError(f"`num_samples` must be an integer >= 1; got {num_samples!r}.")
  if seed is not None and not _is_int(seed):
    raise ValueError(f"`seed` must be an integer or None; got {seed!r}.")


def _traced_spectra(distribution, points, num_samples, log_prob_kwargs):
  """The `tf.function` from a stateless seed `[2]` to the spectra at `points` or at `num_samples` samples.

  Traced here, once: a misfit distribution or points raise the library's error now, not after an epoch, and
  every epoch then runs the same graph. The stateless seed is an argument, so resampling never retraces.
  """
  is_distribution = isinstance(distribution, (tfp.distributions.Distribution, private_api.DeferredModule))
  get_distribution = distribution if callable(distribution) and not is_distribution else lambda: distribution
  if points is None:
    def compute(seed):
      _, hessian = sampling.sample_and_log_prob_hessian(get_distribution(), num_samples, seed=seed,
                                                        **log_prob_kwargs)
      return eigendecomposition(hessian)
  else:
    def compute(seed):
      del seed
      return eigendecomposition(sweep.log_prob_hessian(get_distribution(), points, **log_prob_kwargs))
  compute = tf.function(compute, input_signature=[tf.TensorSpec([2], tf.int32)], autograph=False)
  compute.get_concrete_function()
  return compute


def _medians(spectrum):
  """`{name: value}` of the logged scalars, unprefixed: medians over the finite points, and `finite_fraction`."""
  eigenvalues = np.asarray(spectrum.eigenvalues)
  size = eigenvalues.shape[-1]
  finite = np.asarray(spectrum.finite).reshape(-1)
  magnitude = np.abs(eigenvalues.reshape(-1, size)[finite])
  keys = ("stiffest", "sloppiest", "decades", "condition_number")
  if not magnitude.size:
    values = dict.fromkeys(keys, float("nan"))
  else:
    with np.errstate(divide="ignore", invalid="ignore"):  # a zero eigenvalue: inf, as tfp_hessian.decades
      ratio = magnitude[:, 0] / magnitude[:, -1]
    values = dict(zip(keys, (np.median(magnitude[:, 0]), np.median(magnitude[:, -1]),
                             np.median(np.log10(ratio)), np.median(ratio))))
  values["finite_fraction"] = finite.mean() if finite.size else float("nan")
  return values


def _log10_histogram(spectrum):
  """TensorBoard's histogram buckets `[bins, 3]` (left edge, right edge, count) of `log10 |λ|` over the finite
  points, or None if there is no such eigenvalue."""
  with np.errstate(divide="ignore"):
    log_magnitude = np.log10(np.abs(spectrum.eigenvalues[spectrum.finite])).reshape(-1)
  log_magnitude = log_magnitude[np.isfinite(log_magnitude)]  # a zero eigenvalue has no place on the axis
  if not log_magnitude.size:
    return None
  counts, edges = np.histogram(log_magnitude, bins=_HISTOGRAM_BINS)
  return np.stack([edges[:-1], edges[1:], counts], axis=-1)


def _metadata(plugin_name):
  return summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin_name))


def _is_int(value):
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


_DOC = """Records the Hessian spectrum of a flow every `every_n_epochs` epochs of `Model.fit`.

  {which}

  At the end of every epoch `e` with `(e + 1) % every_n_epochs == 0` (so after every `every_n_epochs` epochs of
  training), the callback computes the Hessians `∇²_z log q(z)` `[P, D, D]` at `points`, or at `num_samples`
  samples of the current flow (`tfp_hessian.sample_and_log_prob_hessian`: no inverse is run), eigendecomposes
  them and writes the medians over the points of the scalars below into that epoch's `logs`:

  `hessian/stiffest` (`|λ|max`), `hessian/sloppiest` (`|λ|min`), `hessian/decades` (`log10(|λ|max/|λ|min)`),
  `hessian/condition_number` (`|λ|max/|λ|min`) and `hessian/finite_fraction` (the fraction of points whose
  Hessian is finite; the medians are over those, NaN if there are none).

  Keras runs callbacks in list order, all on the same `logs`: place this callback *before* any callback that
  reads its keys (`CSVLogger`, `EarlyStopping(monitor="hessian/decades")`, Keras' own `TensorBoard`).
  `History` and the progress bar come last and always see them. Epochs without a spectrum have no such keys,
  so `history.history["hessian/decades"]` has one entry per recorded epoch, not per epoch.

  The Hessians and spectra are computed by one `tf.function`, traced when the callback is constructed (so a
  distribution or points the library refuses raise its error then, before training) and never retraced.

  Attributes:
    spectra: list of `(epoch, Spectrum)` in the order recorded, each `Spectrum` of numpy arrays
      (`eigenvalues [P, D]` stiffest first, `eigenvectors [P, D, D]` or None, `finite [P]`; `[*batch, ...]` for
      points of shape `[*batch, D]`). `epoch` is Keras' 0-based index of the epoch at whose end it was taken, and
      `initial_epoch - 1` (-1 unless `fit` resumes) for the one taken before training, so `epoch + 1` is always
      the number of epochs trained. Records accumulate over several `fit` calls.

  Args:
    distribution: the flow being trained: a `tfd.Distribution` (or `DeferredModule`) whose parameters are the
      model's variables, or a zero-argument callable returning it. Events of any structure are taken over their
      flat event (`tfp_hessian.flatten_event`), of size `D`. The callable is called inside the traced function,
      so it must build the distribution from the variables themselves (as a layer's `call` does), not return a
      snapshot of their values.
    points: `[*batch, D]` fixed points of the distribution's dtype, captured when the callback is constructed.
      Exactly one of `points` and `num_samples`.
    num_samples: how many samples of the current flow to take the Hessians at, each time.
    every_n_epochs: record after every this many epochs, an integer >= 1.
    seed: integer seed of the samples. By default the same base draws are pushed through the current flow every
      time (common random numbers), so that changes between epochs are the flow's, not the draws'.
    resample: draw new base samples each time (from `seed` and the epoch) instead.
    initial: also record the spectrum before training (at the first epoch's start, as epoch
      `initial_epoch - 1`; in `spectra` and TensorBoard, not in `logs`, which belong to epochs).
    log_dir: directory for TensorBoard event files (scalars under `prefix`, and a histogram
      `prefix + "log10_abs_eigenvalues"`), with the epoch as step; None writes none. TensorBoard need not be
      installed to write them.
    prefix: prefix of the keys in `logs` and of the TensorBoard tags.
    keep_eigenvectors: keep the eigenvectors in `spectra` (`P · D²` numbers per record); False keeps None.
    log_prob_kwargs: keyword arguments of `log_prob` (and `sample`), e.g. `{{"bijector_kwargs":
      {{"conditional_input": c}}}}` for a conditional flow, fixed for the whole training.

  Raises:
    ValueError: unless exactly one of `points` and `num_samples` is given; if `every_n_epochs` or `num_samples`
      is not a positive integer; if `points` do not have the distribution's event size (the library's error).
    TypeError, NotImplementedError: the library's errors for a distribution or points it does not support.
  """


class HessianSpectrumCallback(_HessianSpectrumMonitor, tf_keras.callbacks.Callback):
  __doc__ = _DOC.format(which="For tf-keras models (`tf_keras.Model`, TFP's Keras layers); for Keras 3 use "
                              "`Keras3HessianSpectrumCallback`, the same callback.")


class Keras3HessianSpectrumCallback(_HessianSpectrumMonitor, keras.callbacks.Callback):
  __doc__ = _DOC.format(which="For Keras 3 models (`keras.Model`, `tf.keras.Model` in TensorFlow >= 2.16); for "
                              "tf-keras use `HessianSpectrumCallback`, the same callback.")
