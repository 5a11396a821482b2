"""Training losses of LAUDNet: the sparsity (FLOPs) loss with the official bounds
schedule, and knowledge distillation."""

from __future__ import annotations

import math
import sys
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .maskers import finite_real, positive_real
from .resnet import ModelStats


class SparsityLoss(nn.Module):
    """Official LAUDNet sparsity loss (``SparsityCriterion_bounds``).

    loss = mean_i [max(0, r_i − upper)² + max(0, lower − r_i)²] + (F/F_dense − target)²

    where r_i is block i's FLOPs ratio, F the model's sparse FLOPs and F_dense the dense
    network's, both at the input's own size (the official training script takes F_dense
    at 224x224 whatever its image size: the same at 224, and at other sizes this ratio is
    the one the target means). The per-block bounds start at lower = upper = target and
    relax to [0, 1] over the first third of training (each block is free to deviate from
    the target once the whole network meets it):
    progress = cos²(π/2 · min(1, epoch / (0.33·num_epochs))),
    upper = 1 − progress·(1 − target), lower = progress·target.

    Args:
        target: target FLOPs ratio in (0, 1].
        num_epochs: length of training, a positive number (the bounds relax over its
            first third).

    Either may be a one-value tensor or a 0-d numpy array; both are kept as floats.
    The loss holds no state (``state_dict()`` is empty): target and num_epochs are
    constructor arguments, as a torch loss's options are, and the epoch is given at every
    call, so a resumed run builds it again with the same arguments and passes the
    resumed epoch (a module holding the loss keeps its checkpoints' keys).

    Raises:
        ValueError: for a target outside (0, 1] or a num_epochs not a finite number > 0
            (NaN, inf and bools included).
    """

    def __init__(self, target: float, num_epochs: float) -> None:
        super().__init__()
        try:  # (one-value tensors and 0-d numpy arrays count, as for ``bounds``' epoch)
            t = finite_real("target", target)
        except ValueError:
            t = math.nan
        if not 0.0 < t <= 1.0:
            raise ValueError(f"target must be a number in (0, 1], got {target!r}")
        try:
            n = finite_real("num_epochs", num_epochs, positive=True)
        except ValueError:
            raise ValueError(f"num_epochs must be a positive number, got {num_epochs!r}"
                             ) from None
        self.target, self.num_epochs = t, n

    def bounds(self, epoch: float) -> tuple[float, float]:
        """(lower, upper) per-block bounds at ``epoch`` (may be fractional; before 0 it
        counts as 0).

        Raises:
            ValueError: unless epoch is a finite real number (or a one-element tensor of
                one): a NaN epoch made both bounds, and so the loss, NaN.
        """
        e = finite_real("epoch", epoch)
        # e / N first: 0.33·N underflows to 0 for N = 5e-324 (a ZeroDivisionError)
        p = min(max(e / self.num_epochs / 0.33, 0.0), 1.0)
        progress = math.cos(p * math.pi / 2) ** 2
        return progress * self.target, 1.0 - progress * (1.0 - self.target)

    def forward(self, stats: ModelStats, epoch: float) -> torch.Tensor:
        """stats: the model's ``last_stats`` (from a training forward).

        Warns (UserWarning) when grad mode is on and the statistics carry no gradient,
        so that the loss cannot train the maskers: stats of an eval-mode forward, or of a
        training forward whose statistics lost their graph (reentrant checkpointing), or
        stale ones (``nn.DataParallel`` runs forward on replicas, which keep theirs).

        Non-finite statistics (a forward that produced NaN or inf) give a non-finite
        loss, as torch's losses do, and are not refused: a check would wait on the device
        at every step, and an AMP ``GradScaler`` needs the non-finite gradient to skip
        the step and lower its scale.

        Raises:
            ValueError: if stats is None (no forward yet, an empty batch, or a compiled
                model, which keeps no statistics), not a ModelStats, or one of no dynamic
                block (a model whose stages hold none: no masker to train, and the
                per-block mean is over no block); if epoch is not a finite number
                (``bounds``).
        """
        if stats is None:
            raise ValueError("stats is None: the model's last forward left no statistics "
                             "(none yet, an empty batch, or a compiled model)")
        if not isinstance(stats, ModelStats):  # a block's BlockStats has no per-block ratios
            raise ValueError(f"stats must be a LaudResNet's ModelStats (model.last_stats), "
                             f"got {type(stats).__name__}")
        if not stats.blocks:  # (the official loss divides by len(flops_perc_list) = 0)
            raise ValueError("stats hold no dynamic block (stats.blocks is empty): the "
                             "model has no LaudBottleneck, so no masker for this loss")
        lower, upper = self.bounds(epoch)
        if torch.is_grad_enabled() and not stats.flops.requires_grad:
            warnings.warn("SparsityLoss: the statistics carry no gradient, so this loss "
                          "cannot train the maskers: they come from an eval-mode or no_grad "
                          "forward, or from one whose statistics lost their graph "
                          "(reentrant torch.utils.checkpoint; under nn.DataParallel the "
                          "replicas keep theirs, so model.module.last_stats is stale)",
                          stacklevel=_caller_stacklevel())
        ratios = stats.block_flops_ratios
        block = (F.relu(ratios - upper) ** 2 + F.relu(lower - ratios) ** 2).mean()
        return block + (stats.flops / stats.dense_flops - self.target) ** 2


def _caller_stacklevel() -> int:
    """The ``stacklevel`` that attributes a warning of a loss's ``forward`` to the line
    that called the loss, past ``nn.Module.__call__``'s frames (``stacklevel=2`` named
    torch's module.py); call it from ``forward`` itself."""
    skip = {__file__, nn.modules.module.__file__}
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename in skip:
        frame, level = frame.f_back, level + 1
    return level


class KDLoss(nn.Module):
    """Knowledge distillation: T² · KL(softmax(teacher/T) ‖ softmax(student/T)), batch mean."""

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = positive_real("temperature", temperature)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor
                ) -> torch.Tensor:
        """student_logits, teacher_logits [B, num_classes] -> the scalar loss (T² · KL,
        batch mean); no gradient flows into the teacher (its logits are detached).

        Raises:
            ValueError: unless both are 2-D tensors of one shape (``kl_div`` would
                broadcast a [1, C] or [B, 1] teacher into a wrong loss) with a sample
                and a class (over no class the loss was 0, with no gradient).
        """
        for name, v in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
            if not isinstance(v, torch.Tensor) or v.dim() != 2:
                got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
                raise ValueError(f"{name} must be a [B, num_classes] tensor, got {got}")
        if student_logits.shape != teacher_logits.shape:
            raise ValueError(f"student_logits {tuple(student_logits.shape)} and teacher_logits "
                             f"{tuple(teacher_logits.shape)} must have the same shape")
        if student_logits.shape[0] == 0:  # the batch mean of no sample: NaN
            raise ValueError("student_logits and teacher_logits hold no sample (an empty "
                             "batch): the loss, a mean over samples, would be NaN")
        if student_logits.shape[1] == 0:  # softmax over no class: no distribution
            raise ValueError("student_logits and teacher_logits hold no class (shape "
                             f"{tuple(student_logits.shape)}): there is no distribution "
                             "to distil")
        t = self.temperature
        return F.kl_div(
            F.log_softmax(student_logits / t, dim=1),
            F.softmax(teacher_logits.detach() / t, dim=1),
            reduction="batchmean",
        ) * t * t
