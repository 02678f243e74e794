"""Data-poisoning baselines: they change the compromised workers' training data."""

from __future__ import annotations

import torch

from fedpoison.attacks.base import DataAttackContext, TrainingData
from fedpoison.registry import register_attack


def label_flip(ctx: DataAttackContext) -> TrainingData:
    """Flip every label l on a compromised worker to L − l − 1 (paper Section 4.1)."""
    data = ctx.data
    on_compromised = torch.isin(data.owner, ctx.compromised_workers)
    y = torch.where(on_compromised, ctx.num_classes - 1 - data.y, data.y)
    return TrainingData(x=data.x, y=y, owner=data.owner)


register_attack(
    "label-flip", label_flip,
    reference="Fang, Cao, Jia, Gong, USENIX Security 2020: Section 4.1 (label flipping "
              "baseline)",
    summary="every label l on a compromised worker becomes L − l − 1",
    data=True, knowledge=(), goals=(),
)
