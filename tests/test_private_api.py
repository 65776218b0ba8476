"""The private TFP and Keras names `tfp_hessian.private_api` relies on still exist and mean what they meant.

When a TFP or tf-keras release renames or changes one, this fails here, naming it, instead of deep inside a
sweep.
"""

import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

from tfp_hessian import private_api

tfb = tfp.bijectors
tfd = tfp.distributions


def test_private_bases_are_the_public_classes_bases():
  assert issubclass(tfb.Chain, private_api.CHAIN)
  assert issubclass(tfb.Invert, private_api.INVERT)
  assert issubclass(tfb.JointMap, private_api.JOINT_MAP)
  assert issubclass(tfd.TransformedDistribution, private_api.TRANSFORMED)
  assert issubclass(tfd.Independent, private_api.INDEPENDENT)
  assert issubclass(tfd.Sample, private_api.SAMPLE)


def test_kwargs_split_is_the_transformed_distributions_own():
  flow = tfd.TransformedDistribution(tfd.Normal(0., 1.), tfb.Exp())
  kwargs = dict(bijector_kwargs={"a": 1}, distribution_kwargs={"b": 2})
  assert private_api.kwargs_split(flow, kwargs) == ({"b": 2}, {"a": 1})


def test_deferred_module_builds_its_distribution():
  scale = tf.Variable(2.)
  deferred = private_api.DeferredModule(lambda s: tfd.Normal(0., s), scale)
  built = private_api.resolve_deferred(deferred)
  assert isinstance(built, tfd.Normal) and float(built.scale) == 2.


def test_made_accessors():
  made = tfb.AutoregressiveNetwork(params=2, event_shape=[3], hidden_units=[4], conditional=True,
                                   conditional_event_shape=[2])
  assert private_api.made_model(made) is None  # not built yet
  made(tf.zeros([1, 3]), conditional_input=tf.zeros([1, 2]))
  assert isinstance(private_api.made_model(made), tf_keras.Model)
  masks = private_api.made_masks(made)
  assert [mask.shape for mask in masks] == [(3, 4), (4, 6)]  # input -> hidden -> 2 params per coordinate
  assert private_api.made_is_conditional(made) and private_api.made_conditional_size(made) == 2


def test_real_nvp_masked_size():
  assert private_api.real_nvp_masked_size(tfb.RealNVP(fraction_masked=0.5, shift_and_log_scale_fn=None,
                                                      bijector_fn=lambda x, **_: tfb.Identity()), 6) == 3
  assert private_api.real_nvp_masked_size(tfb.RealNVP(num_masked=-2, bijector_fn=lambda x, **_: tfb.Identity()),
                                          6) == -2


def test_flatten_up_to():
  assert private_api.flatten_up_to({"a": None, "b": None}, {"b": [1, 2], "a": 3}) == [3, [1, 2]]


def test_cached_preimage_is_an_input_of_forward_only():
  x = tf.constant([12., -3.], tf.float64)
  y = tfb.Tanh().forward(x)
  assert private_api.cached_preimage(tfb.Tanh(), y, {}) is x  # equal bijectors share TFP's cache
  assert private_api.cached_preimage(tfb.Tanh(name="other"), y, {}) is None
  assert private_api.cached_preimage(tfb.Tanh(), tf.identity(y), {}) is None
  given = tf.constant([0.5], tf.float64)
  tfb.Tanh().inverse(given)  # cached too, but `given` is the input here: its `x` is computed from it
  assert private_api.cached_preimage(tfb.Tanh(), given, {}) is None


def test_xla_compiled_is_the_graph_compiled():
  concrete = tf.function(lambda x: tf.sin(x) * 2., autograph=False).get_concrete_function(tf.TensorSpec([3]))
  compiled = private_api.xla_compiled(concrete)
  assert compiled.graph is concrete.graph
  x = tf.constant([0.1, 0.2, 0.3])
  tf.debugging.assert_near(compiled(x), tf.sin(x) * 2.)
  # What `tf.function(jit_compile=True)` marks its function with: compiled by XLA, and never inlined into a caller.
  attributes = compiled.function_def.attr
  assert attributes["_XlaMustCompile"].b and attributes["_noinline"].b
