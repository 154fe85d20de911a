"""Accurate class activation maps: the dual-branch sigmoid method and the
WSOL benchmark.

The front door::

    from wsol import CAMModel, compute_cams, evaluation_maps, CAM_METHODS

:class:`CAMModel` wraps any classifier (its CAM layer and head) and adds the
sigmoid branch; :func:`compute_cams` computes every CAM method from one pass;
:func:`evaluation_maps` gives the maps the metrics score.  The rest:
:mod:`wsol.dual_branch` (the method's rules), :mod:`wsol.cams`, :mod:`wsol.metrics`
(box, mask and fidelity evaluators), :mod:`wsol.protocol` (wsolevaluation's
definitions), :mod:`wsol.data`, :mod:`wsol.architectures`, :mod:`wsol.runtime`
(training, checkpoints, devices), :mod:`wsol.visualize`.
"""
from wsol.cams import (CAM_METHODS, compute_cams, compute_cams_per_branch, evaluation_maps,
                       verify_cam_model)
from wsol.model import CAMModel

__all__ = ["CAMModel", "compute_cams", "compute_cams_per_branch", "evaluation_maps",
           "CAM_METHODS", "verify_cam_model"]
