"""Shadow and canary deployment of a centroid model, and the promote/keep gate.

Modules:

* :mod:`~beamml.transforms.deployment.kernels` (numpy): :func:`max_weight_matching`
  (the rectangular assignment problem, Hungarian / Jonker-Volgenant shortest augmenting
  path, vectorised over the columns), :func:`agreement` (labels matched up to the best
  one-to-one relabelling), :func:`id_hash` / :func:`canary_mask` (a stable 64-bit hash of
  the ids, the same on every machine and Python run), :func:`comparison_report`;
* :mod:`~beamml.transforms.deployment.gate`: :class:`Gate` and :class:`Threshold`, in
  the spirit of TensorFlow Model Analysis' ``GenericValueThreshold`` /
  ``GenericChangeThreshold``;
* :mod:`~beamml.transforms.deployment.adapters` (Beam): :class:`ShadowComparisonFn` (a
  mergeable CombineFn over the per-batch (production label, shadow label) pairs),
  :class:`VersionCountsFn` (points per model version and cluster), and the composites
  :class:`AssignDeployed` (batch, models as side inputs) and
  :class:`AssignDeployedLatest` (streaming, models looked up by path), which add a
  shadow or a canary model to :mod:`beamml.transforms.assignment`'s DoFns.

The production rows are computed by the unchanged assignment kernel
(:func:`beamml.transforms.assignment.add_assignment`), so they are bit for bit the rows
of a run without a shadow; the shadow labels come from the same kernel on the shadow's
centres, over the same feature matrix in the same pass (the arithmetic of one product
against the stacked ``k1 + k2`` centres, kept as two calls because the exact-tie kernel
shifts the centres by their mean, and a stacked product would shift by another mean and
change the production distances in their last bits).
"""
from beamml.transforms.deployment.adapters import (SHADOW_TAG, AssignDeployed, AssignDeployedLatest,
                                                   ShadowComparisonFn, VersionCountsFn,
                                                   comparison_batch)
from beamml.transforms.deployment.gate import GATE_METRICS, Gate, Threshold, gate_metric
from beamml.transforms.deployment.kernels import (agreement, canary_mask, comparison_report,
                                                  id_hash, max_weight_matching, unit_hash)

__all__ = ['max_weight_matching', 'agreement', 'comparison_report', 'id_hash', 'unit_hash',
           'canary_mask', 'Gate', 'Threshold', 'GATE_METRICS', 'gate_metric',
           'ShadowComparisonFn', 'VersionCountsFn', 'AssignDeployed', 'AssignDeployedLatest',
           'SHADOW_TAG', 'comparison_batch']
