"""Knowledge distillation from the ticket's trained dense net, and the one place that turns
`TweakConfig` into the training loss (plain CE, label smoothing or KD)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lth_core.config import TweakConfig
from lth_core.training import LossFn
from lth_core.tweaks.label_smoothing import smoothed_cross_entropy


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                      alpha: float, temperature: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y).

    The KL is summed over classes and averaged over the batch ('batchmean'); the mean over
    elements would divide it by the number of classes as well. T^2 keeps the soft-target
    gradients on the scale of the hard-target ones (Hinton et al. 2015). Computed in float32.
    """
    t = temperature
    log_p_student = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.detach().float() / t, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    ce = smoothed_cross_entropy(student_logits, targets, label_smoothing)
    return alpha * t * t * kl + (1.0 - alpha) * ce


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


def make_loss(tweaks: TweakConfig, teacher: Teacher | None) -> LossFn:
    """The training loss the tweaks ask for: KD (with label smoothing on its CE part when set),
    else label-smoothed CE, else plain CE. A teacher passed without `tweaks.kd` is unused."""
    eps = tweaks.label_smoothing
    kd = tweaks.kd
    if kd is not None:
        if teacher is None:
            raise ValueError("tweaks.kd is set but no teacher was given: knowledge distillation needs "
                             "the ticket's trained dense model (see load_teacher)")

        def kd_loss(student_logits: torch.Tensor, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return distillation_loss(student_logits, teacher(images), targets,
                                     kd.alpha, kd.temperature, label_smoothing=eps)
        return kd_loss

    def ce_loss(student_logits: torch.Tensor, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return smoothed_cross_entropy(student_logits, targets, eps)
    return ce_loss
