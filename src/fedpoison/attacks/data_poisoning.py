"""Data-poisoning baselines: they change the compromised workers' training data."""

from __future__ import annotations

import torch

from fedpoison.attacks.base import DataAttackContext, TrainingData


def label_flip(ctx: DataAttackContext) -> TrainingData:
    """Flip every label l on a compromised worker to L − l − 1 (paper Section 4.1)."""
    data = ctx.data
    on_compromised = torch.isin(data.owner, ctx.compromised_workers)
    y = torch.where(on_compromised, ctx.num_classes - 1 - data.y, data.y)
    return TrainingData(x=data.x, y=y, owner=data.owner)
