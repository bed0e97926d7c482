"""Explicit pruning masks: parameter name -> bool tensor.

A mask is data, never inferred from zero weights. It is saved as safetensors,
applied to a model's weights in place, and re-applied after every optimizer
step (one fused `_foreach_mul_`) so that training never revives a pruned weight.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch import nn


def prunable_names(model: nn.Module, prune_linear: bool = False) -> list[str]:
    """Names of the weights pruning may touch: every conv weight, and linear weights if asked.
    BatchNorm, biases and injected skip branches (`.skip.`, dense by design) are never pruned."""
    kinds: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear) if prune_linear else (nn.Conv2d,)
    return [f"{name}.weight" if name else "weight" for name, module in model.named_modules()
            if isinstance(module, kinds) and ".skip." not in f".{name}."]


class Mask(Mapping[str, torch.Tensor]):
    """An immutable map from parameter name to a bool tensor of the parameter's shape (True = kept)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]):
        for name, t in tensors.items():
            if t.dtype != torch.bool:
                raise TypeError(f"mask for {name} must be a bool tensor, got {t.dtype}")
        self._tensors = {name: t.detach().cpu().contiguous() for name, t in sorted(tensors.items())}

    @classmethod
    def ones_like(cls, model: nn.Module, prune_linear: bool = False) -> Mask:
        params = dict(model.named_parameters())
        return cls({n: torch.ones_like(params[n], dtype=torch.bool, device="cpu")
                    for n in prunable_names(model, prune_linear)})

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    @property
    def total(self) -> int:
        return sum(t.numel() for t in self._tensors.values())

    @property
    def kept(self) -> int:
        return sum(int(t.sum()) for t in self._tensors.values())

    @property
    def sparsity(self) -> float:
        """Fraction of prunable weights removed."""
        return 1.0 - self.kept / self.total if self.total else 0.0

    def layer_sparsity(self) -> dict[str, float]:
        return {n: 1.0 - float(t.float().mean()) for n, t in self._tensors.items()}

    def check_fits(self, model: nn.Module) -> None:
        """Raise if a masked name is missing from the model or has another shape."""
        params = dict(model.named_parameters())
        for name, t in self._tensors.items():
            if name not in params:
                raise KeyError(f"mask names parameter {name!r}, which the model does not have")
            if params[name].shape != t.shape:
                raise ValueError(f"mask for {name} has shape {tuple(t.shape)}, "
                                 f"the parameter {tuple(params[name].shape)}")

    def apply_(self, model: nn.Module) -> None:
        """Zero the pruned weights of `model` in place (exactly, even where a weight is NaN)."""
        MaskApplier(model, self).zero_pruned_()

    def to_bytes(self) -> bytes:
        return save_safetensors_bytes(dict(self._tensors))

    @classmethod
    def from_bytes(cls, data: bytes) -> Mask:
        return cls(load_safetensors_bytes(data))

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.to_bytes())

    @classmethod
    def load(cls, path: str | Path) -> Mask:
        return cls.from_bytes(Path(path).read_bytes())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mask) or set(self) != set(other):
            return False
        return all(torch.equal(self[n], other[n]) for n in self)

    def __repr__(self) -> str:
        return f"Mask({len(self)} tensors, sparsity={self.sparsity:.4f})"


class MaskApplier:
    """Holds the masked parameters and their masks on the model's device, as the parameters'
    dtype, so re-applying after each optimizer step is a single fused multiply."""

    def __init__(self, model: nn.Module, mask: Mask):
        mask.check_fits(model)
        params = dict(model.named_parameters())
        self.params = [params[n] for n in mask]
        self.factors = [mask[n].to(device=params[n].device, dtype=params[n].dtype)
                        .contiguous(memory_format=memory_format_of(params[n])) for n in mask]

    @torch.no_grad()
    def apply_(self) -> None:
        """The per-step re-apply: one fused multiply (a NaN weight stays NaN: `zero_pruned_`)."""
        if self.params:
            torch._foreach_mul_(self.params, self.factors)

    @torch.no_grad()
    def zero_pruned_(self) -> None:
        """Pruned weights set to exactly zero whatever they hold: a run that diverged to NaN or inf
        still ends with its mask intact."""
        for param, factor in zip(self.params, self.factors, strict=True):
            param.masked_fill_(factor == 0, 0.0)


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    """channels_last for a 4-D tensor stored that way, else the contiguous format."""
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format
