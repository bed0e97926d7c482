"""What a person reads: the per-level table of a draw and the per-stage progress bars.

Shared by the core CLI (`python -m lth_core`) and the sweep entry points, so that no
entry point imports another.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lth_core.training import EpochRecord


def weights_line(weights: dict[str, int]) -> str:
    """How many prunable weights there are and how many are live (`lth_core.live`)."""
    prunable, live = weights["prunable"], weights["live"]
    return f"{prunable:,} prunable weights, {live:,} live ({live / prunable:.1%})" if prunable else "no prunable weight"


def dead_weights_warning(weights: dict[str, int], input_size: int) -> str | None:
    """One line when more than 10% of the prunable weights never see data, else None."""
    prunable, dead = weights["prunable"], weights["prunable"] - weights["live"]
    if not prunable or dead <= 0.1 * prunable:
        return None
    return (f"warning: {dead / prunable:.1%} of the prunable weights only ever see padding at {input_size}x"
            f"{input_size} input (they still count in the nominal sparsity; see the live sparsity)")


def format_levels(summary: dict[str, Any]) -> str:
    """The per-level table of a draw: sparsity (nominal and among live weights) and vanilla LTH
    accuracy (a draw at initialisation trains nothing: its table has the sparsities only). A draw
    stored before live weights were counted shows '-' for them."""
    config = summary["config"]
    method = config.get("pruning", {}).get("method", "imp")
    weights = summary.get("weights")
    lines = [f"ticket {summary['key']}  ({config['model']['arch']} on {config['data']['name']}, {method} masks"
             + (f"; {weights_line(weights)})" if weights else ")"),
             f"{'level':>5}  {'sparsity':>8}  {'live':>8}  {'best val':>8}  {'test acc':>8}"]
    dense = summary["dense"]
    if dense is not None:
        lines.append(f"{0:>5}  {0.0:>8.2%}  {0.0:>8.2%}  {dense['best_val_acc']:>8.2%}  {dense['test_acc']:>8.2%}"
                     "  (dense)")
    for lv in summary["levels"]:
        accs = (f"{lv['best_val_acc']:>8.2%}  {lv['test_acc']:>8.2%}" if "test_acc" in lv
                else f"{'-':>8}  {'-':>8}  (mask at initialisation)")
        live = f"{lv['live_sparsity']:>8.2%}" if "live_sparsity" in lv else f"{'-':>8}"
        lines.append(f"{lv['level']:>5}  {lv['sparsity']:>8.2%}  {live}  {accs}")
    return "\n".join(lines)


class StageProgress:
    """One progress bar per stage (dense run, each level, the spend) on stderr."""

    def __init__(self, epochs_of: dict[str, int] | None = None, default_epochs: int = 0):
        from tqdm import tqdm

        self._tqdm = tqdm
        self._bar = None
        self._stage = None
        self._epochs_of = epochs_of or {}
        self._default = default_epochs

    def __call__(self, stage: str, record: EpochRecord) -> None:
        if stage != self._stage:
            self.close()
            self._stage = stage
            total = self._epochs_of.get(stage, self._default)
            self._bar = self._tqdm(total=total, desc=stage, file=sys.stderr, leave=True, dynamic_ncols=True,
                                   initial=record.epoch - 1)
        self._bar.set_postfix(loss=f"{record.train_loss:.3f}", val=f"{record.val_acc:.3f}",
                              test=f"{record.test_acc:.3f}")
        self._bar.update(record.epoch - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
