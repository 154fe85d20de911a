"""CAM methods on either branch of a :class:`wsol.model.CAMModel`.

``compute_cams`` / ``compute_cams_per_branch`` run the pass
(:mod:`wsol.cams.compute`) over the shared mechanism (:mod:`wsol.cams.capture`);
each method is a class owning its settings (:mod:`wsol.cams.base`; gradient and
class-weight methods in :mod:`wsol.cams.methods`, perturbation methods in
:mod:`wsol.cams.perturbation`, principal-direction methods in
:mod:`wsol.cams.decomposition`, multi-layer ones in :mod:`wsol.cams.multilayer`,
LeGrad in :mod:`wsol.cams.legrad`), all by name in :mod:`wsol.cams.registry`;
``evaluation_maps`` gives the maps the metrics score (:mod:`wsol.cams.maps`);
``verify_cam_model`` checks a model once (:mod:`wsol.cams.check`).
"""
from wsol.cams.base import CAMInputs, CAMMethod
from wsol.cams.capture import ActivationCapture
from wsol.cams.check import ModelCheckError, supported_methods, verify_cam_model
from wsol.cams.compute import (CAMOutput, compute_cams, compute_cams_for_target_sets,
                               compute_cams_per_branch)
from wsol.cams.decomposition import EigenCAM, EigenGradCAM, KPCACAM
from wsol.cams.legrad import LeGrad
from wsol.cams.maps import MAP_STYLES, evaluation_maps
from wsol.cams.methods import (CAM, FEM, FinerCAM, GradCAM, GradCAMElementWise,
                               GradCAMPlusPlus, HiResCAM, LayerCAM, ShapleyCAM,
                               SmoothGradCAMPlusPlus, XGradCAM, gradcampp_weights)
from wsol.cams.multilayer import FullGrad, RefineCAM
from wsol.cams.perturbation import ISCAM, SSCAM, AblationCAM, ScoreCAM
from wsol.cams.registry import (CAM_METHODS, METHOD_CLASSES, make_method,
                                parse_method_options, parse_methods, resolve_methods)
from wsol.protocol import normalize_maps

__all__ = ["ActivationCapture", "ModelCheckError", "verify_cam_model", "supported_methods",
           "CAMOutput",
           "compute_cams", "compute_cams_per_branch", "compute_cams_for_target_sets",
           "MAP_STYLES", "evaluation_maps",
           "CAM_METHODS", "METHOD_CLASSES", "CAMInputs", "CAMMethod", "make_method",
           "parse_method_options", "parse_methods", "resolve_methods",
           "CAM", "GradCAM", "GradCAMPlusPlus", "SmoothGradCAMPlusPlus", "XGradCAM", "LayerCAM",
           "ScoreCAM", "HiResCAM", "EigenCAM",
           "AblationCAM", "EigenGradCAM", "FEM", "FinerCAM", "FullGrad", "GradCAMElementWise",
           "KPCACAM", "ShapleyCAM", "RefineCAM", "SSCAM", "ISCAM", "LeGrad",
           "gradcampp_weights", "normalize_maps"]
