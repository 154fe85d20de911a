"""The choices where the public code and this toolkit differ.

The learning-rate groups and decay are the published recipes' meaning and
are always as the method's public code has them (:mod:`wsol.runtime.training`).
The choices below are where ours is the correct or the usual one and the
public code's is a bug or a variant; ``--replay public_code`` takes all of the
method's public code's at once so that its tables can be replayed, ``--replay
recam`` ReCAM's public code's (docs/reproducing.md).  Each can still be set on
its own; a run records the choices it used.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

__all__ = ["RunChoices", "REPLAYS", "resolve_choices"]


@dataclass(frozen=True)
class RunChoices:
    sigmoid_init: str = "clone"            # clone (the paper) | random (public code's init)
    frozen_mode: str = "eval"              # eval | public_code (BN batch stats, dropout on)
    map_style: str = "wsolevaluation"      # wsolevaluation | public_code (bilinear, grad family)
    first_box_only: bool = False           # GT-known / Top-1 Loc against the first GT box
    threshold_list: str = "wsolevaluation"  # arange(0, 1, step) | public_code (rounded, 1.0)
    fidelity: str = "softmax_head"         # softmax_head (GT class) | public_code (Table 1)
    seed: int = 0
    seed_resize: str = "image"             # image | recam (ReCAM's seed maps, stride grid)

    def as_dict(self) -> dict:
        return asdict(self)


REPLAYS = {
    "none": RunChoices(),
    "public_code": RunChoices(sigmoid_init="random", frozen_mode="public_code",
                              map_style="public_code", first_box_only=True,
                              threshold_list="public_code", fidelity="public_code", seed=42),
    # ReCAM's public code (docs/reproducing.md, "ReCAM"): how its seed maps are resized.
    "recam": RunChoices(seed_resize="recam"),
}


def resolve_choices(replay: str, **explicit) -> RunChoices:
    """The replay's choices with every explicitly given one (not None) on top."""
    if replay not in REPLAYS:
        raise ValueError(f"unknown --replay {replay!r}; choose one of {', '.join(REPLAYS)}")
    return replace(REPLAYS[replay], **{k: v for k, v in explicit.items() if v is not None})
