"""Label smoothing, knowledge distillation and the loss dispatch (lth_core.tweaks)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from types import SimpleNamespace

from lth_core.config import TweakConfig
from lth_core.hooks import cross_entropy_loss
from lth_core.tweaks import compose_loss
from lth_core.tweaks.distillation import KDConfig, Teacher, clear_teachers, distillation_loss, load_teacher
from lth_core.tweaks.label_smoothing import smoothed_cross_entropy

STUDENT = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
TEACHER = [[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
TARGETS = [1, 2]


def _log_softmax(row: list[float], t: float) -> list[float]:
    scaled = [v / t for v in row]
    log_z = math.log(sum(math.exp(v) for v in scaled))
    return [v - log_z for v in scaled]


def _hand_kd(alpha: float, t: float) -> float:
    """The REFERENCE.md formula in plain Python: KL summed over classes, averaged over the batch."""
    kl = 0.0
    for s, te in zip(STUDENT, TEACHER):
        log_q, log_p = _log_softmax(s, t), _log_softmax(te, t)
        kl += sum(math.exp(lp) * (lp - lq) for lp, lq in zip(log_p, log_q))
    kl /= len(STUDENT)
    ce = -sum(_log_softmax(s, 1.0)[y] for s, y in zip(STUDENT, TARGETS)) / len(STUDENT)
    return alpha * t * t * kl + (1 - alpha) * ce


@pytest.fixture
def logits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(TARGETS)


@pytest.mark.parametrize("eps", [0.0, 0.05, 0.1, 0.3, 0.9])
def test_smoothed_ce_matches_torch(eps: float) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 10, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 10, (16,), generator=g)
    ref = nn.CrossEntropyLoss(label_smoothing=eps)(x.float(), y)
    assert smoothed_cross_entropy(x.float(), y, eps).item() == pytest.approx(ref.item(), abs=1e-6)


def test_smoothed_ce_is_float32_for_bf16_logits() -> None:
    x = torch.randn(4, 5).bfloat16()
    y = torch.tensor([0, 1, 2, 3])
    out = smoothed_cross_entropy(x, y, 0.1)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(nn.CrossEntropyLoss(label_smoothing=0.1)(x.float(), y).item(), abs=1e-6)


@pytest.mark.parametrize("alpha,t", [(0.9, 5.0), (0.5, 2.0), (0.3, 1.0)])
def test_distillation_matches_hand_computation(logits, alpha: float, t: float) -> None:
    s, te, y = logits
    assert distillation_loss(s, te, y, alpha, t).item() == pytest.approx(_hand_kd(alpha, t), rel=1e-5)


def test_distillation_known_value() -> None:
    # Uniform teacher, student sure of class 0 with logits (log 2, 0): q = (2/3, 1/3), p = (1/2, 1/2).
    # KL(p || q) = 1/2 log(3/4) + 1/2 log(3/2); T = 1, alpha = 1 leaves only that term.
    s = torch.tensor([[math.log(2.0), 0.0]])
    te = torch.zeros(1, 2)
    expected = 0.5 * math.log(0.75) + 0.5 * math.log(1.5)
    assert distillation_loss(s, te, torch.tensor([0]), 1.0, 1.0).item() == pytest.approx(expected, rel=1e-6)


def test_alpha_one_is_pure_kd(logits) -> None:
    s, te, y = logits
    pure = _hand_kd(1.0, 4.0)
    assert distillation_loss(s, te, y, 1.0, 4.0).item() == pytest.approx(pure, rel=1e-5)
    # The targets do not matter when alpha = 1.
    assert distillation_loss(s, te, 1 - y.clamp(max=1), 1.0, 4.0).item() == pytest.approx(pure, rel=1e-5)


def test_kl_is_batchmean_not_elementwise_mean(logits) -> None:
    s, te, y = logits
    t = 3.0
    num_classes = s.shape[1]
    # What reduction='mean' computes (spelled out: torch plans to make 'mean' act as 'batchmean').
    log_q, log_p = F.log_softmax(s / t, -1), F.log_softmax(te / t, -1)
    elementwise_mean = (log_p.exp() * (log_p - log_q)).mean()
    got = distillation_loss(s, te, y, 1.0, t)
    assert got.item() == pytest.approx(num_classes * t * t * elementwise_mean.item(), rel=1e-5)
    assert got.item() != pytest.approx(t * t * elementwise_mean.item(), rel=1e-2)


def test_distillation_label_smoothing_on_ce_part(logits) -> None:
    s, te, y = logits
    alpha, t, eps = 0.6, 2.0, 0.2
    kd_only = _hand_kd(1.0, t)
    ce = nn.CrossEntropyLoss(label_smoothing=eps)(s, y).item()
    got = distillation_loss(s, te, y, alpha, t, label_smoothing=eps).item()
    assert got == pytest.approx(alpha * kd_only + (1 - alpha) * ce, rel=1e-5)


def test_distillation_bf16_is_computed_in_float32(logits) -> None:
    s, te, y = logits
    got = distillation_loss(s.bfloat16(), te.bfloat16(), y, 0.9, 5.0)
    assert got.dtype == torch.float32
    ref = distillation_loss(s.bfloat16().float(), te.bfloat16().float(), y, 0.9, 5.0)
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)


def test_distillation_gradient_reaches_student_only(logits) -> None:
    s, te, y = logits
    s, te = s.clone().requires_grad_(), te.clone().requires_grad_()
    distillation_loss(s, te, y, 0.9, 5.0).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert te.grad is None


def _dense() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Dropout(0.5), nn.Linear(6, 3))


def test_teacher_is_frozen_and_in_eval_mode() -> None:
    torch.manual_seed(0)
    teacher = Teacher(_dense().train())
    assert not teacher.model.training and not any(m.training for m in teacher.model.modules())
    assert not any(p.requires_grad for p in teacher.model.parameters())
    x = torch.randn(5, 4, requires_grad=True)
    out = teacher(x)
    assert out.shape == (5, 3) and not out.requires_grad
    assert torch.equal(out, teacher(x))  # eval mode: no dropout, BN running statistics


def test_load_teacher_builds_once_per_key_and_device() -> None:
    clear_teachers()
    calls = []

    def build() -> nn.Module:
        calls.append(1)
        return _dense()

    first = load_teacher("ticket-a", build)
    assert load_teacher("ticket-a", build) is first
    assert len(calls) == 1
    on_cpu = load_teacher("ticket-a", build, device="cpu")
    assert on_cpu is not first and load_teacher("ticket-a", build, device=torch.device("cpu")) is on_cpu
    assert load_teacher("ticket-b", build) is not first
    assert len(calls) == 3
    clear_teachers()


def make_loss(tweaks: TweakConfig, teacher: Teacher | None = None):
    """The training loss a spend composes from its tweaks' loss hooks."""
    def no_teacher():
        raise AssertionError("a teacher was asked for without kd")
    ctx = SimpleNamespace(teacher=(lambda: teacher) if teacher is not None else no_teacher)
    return compose_loss(tweaks, ctx, cross_entropy_loss)


def test_loss_hooks_compose(logits) -> None:
    s, te, y = logits
    images = torch.randn(2, 4)
    plain = make_loss(TweakConfig())
    assert plain(s, images, y).item() == pytest.approx(F.cross_entropy(s, y).item(), abs=1e-6)

    smooth = make_loss(TweakConfig(label_smoothing=0.1))
    ref = nn.CrossEntropyLoss(label_smoothing=0.1)(s, y).item()
    assert smooth(s, images, y).item() == pytest.approx(ref, abs=1e-6)

    seen = []

    class FixedTeacher(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x)
            return te

    kd = make_loss(TweakConfig(kd=KDConfig(alpha=0.5, temperature=2.0)), Teacher(FixedTeacher()))
    assert kd(s, images, y).item() == pytest.approx(_hand_kd(0.5, 2.0), rel=1e-5)
    assert seen and seen[0] is images

    kd_ls = make_loss(TweakConfig(kd=KDConfig(alpha=0.5, temperature=2.0), label_smoothing=0.1),
                      Teacher(FixedTeacher()))
    expected = 0.5 * _hand_kd(1.0, 2.0) + 0.5 * ref
    assert kd_ls(s, images, y).item() == pytest.approx(expected, rel=1e-5)
    assert kd_ls(s, images, y).item() == pytest.approx(
        distillation_loss(s, te, y, 0.5, 2.0, label_smoothing=0.1).item(), rel=1e-6)
