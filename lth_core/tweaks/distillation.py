"""Knowledge distillation from the ticket's trained dense net (Hinton et al. 2015)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lth_core.hooks import LossFn
from lth_core.schema import require
from lth_core.tweaks.base import SpendContext, Tweak
from lth_core.tweaks.label_smoothing import smoothed_cross_entropy


@dataclass(frozen=True)
class KDConfig:
    """Distillation from the draw's dense final model."""

    alpha: float = field(default=0.9, metadata={"help": "weight of the soft-target term"})
    temperature: float = field(default=5.0, metadata={"help": "softmax temperature of both nets"})

    def __post_init__(self) -> None:
        require(0 < self.alpha <= 1, "tweaks.kd.alpha", f"must be in (0, 1], got {self.alpha}")
        require(self.temperature > 0, "tweaks.kd.temperature", f"must be > 0, got {self.temperature}")


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                      alpha: float, temperature: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y).

    The KL is summed over classes and averaged over the batch ('batchmean'); the mean over
    elements would divide it by the number of classes as well. T^2 keeps the soft-target
    gradients on the scale of the hard-target ones (Hinton et al. 2015). Computed in float32.
    """
    ce = smoothed_cross_entropy(student_logits, targets, label_smoothing)
    t = temperature
    return alpha * t * t * teacher_kl(student_logits, teacher_logits, t) + (1.0 - alpha) * ce


def teacher_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, t: float) -> torch.Tensor:
    """KL(softmax(teacher/T) || softmax(student/T)), summed over classes, averaged over the batch."""
    log_p_student = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.detach().float() / t, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)


class Teacher:
    """A trained dense model used only for inference: eval mode (BN uses its running
    statistics), no parameter gradients. Calls run under `torch.no_grad` and inside whatever
    autocast the caller has entered, so the teacher runs in the student's precision."""

    def __init__(self, model: nn.Module):
        self.model = model.eval().requires_grad_(False)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(images)


# A worker usually spends one ticket many times; the small bound keeps a worker that moves on to
# other tickets from piling up dense models in accelerator memory.
_MAX_TEACHERS = 2
_TEACHERS: OrderedDict[tuple[str, str | None], Teacher] = OrderedDict()
_TEACHERS_LOCK = threading.Lock()


def load_teacher(key: str, build: Callable[[], nn.Module],
                 device: torch.device | str | None = None) -> Teacher:
    """The teacher for ticket `key`, built by `build()` on the first call in this process and
    reused afterwards. The cache is keyed by (key, device); `device`, when given, is where the
    model is moved; None keeps it where `build` put it."""
    cache_key = (key, None if device is None else str(torch.device(device)))
    with _TEACHERS_LOCK:
        teacher = _TEACHERS.get(cache_key)
        if teacher is None:
            model = build()
            if device is not None:
                model = model.to(device)
            teacher = Teacher(model)
            _TEACHERS[cache_key] = teacher
            while len(_TEACHERS) > _MAX_TEACHERS:
                _TEACHERS.popitem(last=False)
        _TEACHERS.move_to_end(cache_key)
        return teacher


def clear_teachers() -> None:
    """Drop every cached teacher (frees their memory; used by tests)."""
    with _TEACHERS_LOCK:
        _TEACHERS.clear()


class Distillation(Tweak):
    name = "kd"
    summary = "distil from the ticket's trained dense net: alpha * soft targets + (1 - alpha) * hard"
    section = KDConfig
    search = ("off", "on")

    def label(self, value: Any) -> str:
        return f"kd{value.alpha:g},{value.temperature:g}"

    def loss(self, value: Any, inner: LossFn, ctx: SpendContext) -> LossFn:
        teacher = ctx.teacher()

        def kd_loss(logits: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            t, alpha = value.temperature, value.alpha
            kl = teacher_kl(logits, teacher(images), t)
            return alpha * t * t * kl + (1.0 - alpha) * inner(logits, images, labels)
        return kd_loss


TWEAK = Distillation()
