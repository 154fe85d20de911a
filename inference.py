"""One pass over a split: class activation maps of every method and branch
into the evaluators (wsolevaluation's ``inference`` module, from the library).

The pass is :mod:`wsol.pipeline` (``MapPass`` for localization datasets,
``SeedPass`` for segmentation seeds, ``evaluate_run`` from a run's settings);
``CAMComputer`` is wsolevaluation's name for the localization pass.  The
device hand-off that feeds the box evaluator from the GPU without waiting is
:class:`wsol.metrics.DeviceHandOff`.
"""
from wsol.metrics import DeviceHandOff
from wsol.pipeline import MapPass, SeedPass, evaluate_run, evaluation_context

CAMComputer = MapPass

__all__ = ["CAMComputer", "MapPass", "SeedPass", "DeviceHandOff", "evaluate_run",
           "evaluation_context"]
