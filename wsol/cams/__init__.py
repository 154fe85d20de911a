"""CAM methods on either branch of a :class:`wsol.model.CAMModel`.

``compute_cams`` / ``compute_cams_per_branch`` run the pass
(:mod:`wsol.cams.compute`) over the shared mechanism (:mod:`wsol.cams.capture`);
each method is a class owning its settings (:mod:`wsol.cams.methods`);
``evaluation_maps`` gives the maps the metrics score (:mod:`wsol.cams.maps`);
``verify_cam_model`` checks a model once (:mod:`wsol.cams.check`).
"""
from wsol.cams.capture import ActivationCapture
from wsol.cams.check import ModelCheckError, supported_methods, verify_cam_model
from wsol.cams.compute import (CAMOutput, compute_cams, compute_cams_for_target_sets,
                               compute_cams_per_branch)
from wsol.cams.maps import MAP_STYLES, evaluation_maps
from wsol.cams.methods import (CAM, CAM_METHODS, CAMInputs, CAMMethod, EigenCAM, GradCAM,
                               GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM,
                               SmoothGradCAMPlusPlus, XGradCAM, gradcampp_weights,
                               parse_methods, resolve_methods)
from wsol.protocol import normalize_maps

__all__ = ["ActivationCapture", "ModelCheckError", "verify_cam_model", "supported_methods",
           "CAMOutput",
           "compute_cams", "compute_cams_per_branch", "compute_cams_for_target_sets",
           "MAP_STYLES", "evaluation_maps",
           "CAM", "CAM_METHODS", "CAMInputs", "CAMMethod", "EigenCAM", "GradCAM",
           "GradCAMPlusPlus", "HiResCAM", "LayerCAM", "ScoreCAM", "SmoothGradCAMPlusPlus",
           "XGradCAM", "gradcampp_weights", "parse_methods", "resolve_methods",
           "normalize_maps"]
