"""The branches a map can come from, and every per-branch rule, in one table.

A :class:`wsol.model.CAMModel` has up to three branches: the classifier's own
head (``softmax``: the vanilla model), the sigmoid branch of the method
(``sigmoid``, docs/method.md) and ReCAM's re-activation branch (``recam``,
:mod:`wsol.recam`).  Everything that depends on the branch reads
:data:`BRANCH_RULES` or the functions below: which logits are the branch's,
how one of its logits becomes a class score, what its maps clamp, how tables,
JSON and pictures name its rows, and which fidelity protocols apply.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BranchRule", "BRANCH_RULES", "BRANCHES", "CLAMP_RULES", "FIDELITY_PROTOCOLS",
           "branch_rule", "clamp_rule", "clamps_map_weights", "row_label", "branch_title",
           "check_branch"]


@dataclass(frozen=True)
class BranchRule:
    name: str
    logits_key: str     # the branch's entry in CAMModel's outputs
    probability: str    # how its logits become class scores: "softmax" or "sigmoid"
    title: str          # its name in pictures and captions
    clamps_by_default: bool  # the method clamps its maps' weights unless told otherwise


BRANCH_RULES: dict[str, BranchRule] = {r.name: r for r in (
    BranchRule("softmax", "logits", "softmax", "softmax (vanilla)", False),
    BranchRule("sigmoid", "logits_sigmoid", "sigmoid", "sigmoid (ours)", True),
    # ReCAM's re-activation head is a softmax classifier (wsol.recam).
    BranchRule("recam", "logits_recam", "softmax", "recam (re-activated)", False),
)}
BRANCHES = tuple(BRANCH_RULES)

# What is clamped at zero in a branch's maps (the ``clamp_rule`` of a results
# row): nothing; the weights of each map (channel or element-wise, the
# method's rule: wsol.dual_branch.clamp_weights); or ReCAM's two factors W1 and W2
# before their product (wsol.recam.recam_class_weights).
CLAMP_RULES = ("none", "weights", "factors")

# Fidelity protocols (docs/protocol.md): "softmax_head" scores the masked image
# with the softmax head's probability of the ground-truth class, whatever the
# branch of the map; "public_code" (Table 1 of the paper) with the softmax over
# the map's own branch's logits, for the class the softmax head predicts.
# Both apply to every branch; neither to multi-label data (no single class).
FIDELITY_PROTOCOLS = ("softmax_head", "public_code")


def branch_rule(branch: str) -> BranchRule:
    try:
        return BRANCH_RULES[branch]
    except KeyError:
        raise ValueError(f"unknown branch {branch!r}; choose one of {', '.join(BRANCHES)}") \
            from None


def check_branch(branch: str, is_dual: bool, has_recam: bool) -> None:
    """A ValueError naming the fix when a model has no such branch."""
    branch_rule(branch)
    if branch == "sigmoid" and not is_dual:
        raise ValueError("this model has no sigmoid branch: fine-tune one (--model_structure "
                         "b2) or use the softmax branch")
    if branch == "recam" and not has_recam:
        raise ValueError("this model has no re-activation head (train one with --recam); "
                         "drop the recam branch")


def clamp_rule(branch: str, clamp: bool = True, recam_clamp: str = "none") -> str:
    """What maps of ``branch`` clamp (:data:`CLAMP_RULES`): the sigmoid
    branch's weights unless ``clamp`` is off (an ablation); never the softmax
    head's; for the recam branch what ``--recam_clamp`` says (``product``
    clamps each map's weights, as the sigmoid branch's are clamped)."""
    rule = branch_rule(branch)
    if branch == "recam":
        try:
            return {"none": "none", "factors": "factors", "product": "weights"}[recam_clamp]
        except KeyError:
            raise ValueError(f"unknown ReCAM clamp {recam_clamp!r}; choose none, factors or "
                             f"product") from None
    return "weights" if rule.clamps_by_default and clamp else "none"


def clamps_map_weights(rule: str) -> bool:
    """Whether the CAM methods clamp the weights of each map (the rest of a
    rule, ReCAM's factors, is in the branch's class weights)."""
    return rule == "weights"


def row_label(branch: str, rule: str) -> str:
    """A row's branch as tables show it: the branch, and what it clamps where
    that is not the branch's default."""
    default = "weights" if branch_rule(branch).clamps_by_default else "none"
    if rule == default:
        return branch
    return f"{branch} ({'no clamp' if rule == 'none' else rule + ' clamped'})"


def branch_title(branch: str, rule: str | None = None) -> str:
    """A branch as pictures caption it (``rule``: as in :func:`row_label`)."""
    title = branch_rule(branch).title
    label = row_label(branch, rule) if rule is not None else branch
    return title if label == branch else f"{title}, {label[len(branch) + 2:-1]}"
