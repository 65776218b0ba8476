"""Exact, fast Hessians of normalizing-flow log densities for TensorFlow Probability.

>>> import tfp_hessian
>>> hessian = tfp_hessian.log_prob_hessian(flow, z)   # [*batch, D, D]
"""

from tfp_hessian import bijectors, examples, plots, reference, registry
from tfp_hessian.chunked import default_chunk_size, hessians_in_chunks
from tfp_hessian.distribution import TransformedDistribution
from tfp_hessian.eigenpairs import Eigenpairs, top_eigenpairs
from tfp_hessian.events import event_names, flatten_event, unflatten_event
from tfp_hessian.hvp import log_prob_hvp
from tfp_hessian.memory import get_memory_limit, set_memory_limit
from tfp_hessian.pullback import Pullback
from tfp_hessian.results_directory import keep_verified_chunks
from tfp_hessian.sampling import sample_and_log_prob_derivatives, sample_and_log_prob_hessian
from tfp_hessian.stiff_sloppy import (Spectrum, condition_number, coordinate_contributions, decades, spectrum,
                                      stiff_sloppy_split)
from tfp_hessian.sweep import LogProbDerivatives, execution_plan, log_prob_and_derivatives, log_prob_hessian

__version__ = "0.1.0"

__all__ = [
    "Eigenpairs",
    "LogProbDerivatives",
    "Pullback",
    "Spectrum",
    "TransformedDistribution",
    "bijectors",
    "condition_number",
    "coordinate_contributions",
    "decades",
    "default_chunk_size",
    "event_names",
    "examples",
    "execution_plan",
    "flatten_event",
    "get_memory_limit",
    "hessians_in_chunks",
    "keep_verified_chunks",
    "log_prob_and_derivatives",
    "log_prob_hessian",
    "log_prob_hvp",
    "plots",
    "reference",
    "registry",
    "sample_and_log_prob_derivatives",
    "sample_and_log_prob_hessian",
    "set_memory_limit",
    "spectrum",
    "stiff_sloppy_split",
    "top_eigenpairs",
    "unflatten_event",
]
