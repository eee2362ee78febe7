"""dcca_jax: CCA, kernel CCA and deep CCA for cross-modal image tag recommendation, in JAX."""

from dcca_jax.base import CorrelationModel, correlation_score_curve, load_model, paired_correlations
from dcca_jax.cca import CCAParams, LinearCCA, fit_linear_cca, project
from dcca_jax.linalg import cholesky_whitener, covariance, inv_sqrtm, sqrtm_psd
from dcca_jax.objectives import (
    OBJECTIVES,
    analytic_trace_norm_gradient,
    canonical_correlations,
    cca_loss,
    correlation_matrix,
    correlation_objective,
)

__version__ = "0.1.0"
