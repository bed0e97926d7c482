"""Weight rewinding: start the spend from the dense run's weights at epoch K instead of its
initialisation (Frankle et al. 2020, "Linear mode connectivity and the lottery ticket hypothesis")."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lth_core.schema import ConfigError, require
from lth_core.tweaks.base import Tweak

if TYPE_CHECKING:
    from lth_core.config import SpendConfig


class Rewind(Tweak):
    name = "rewind_epoch"
    summary = "start from the dense run's weights at this epoch (one the ticket keeps: keep_epochs)"
    value_type = int
    default = 0
    search = (0,)
    example = 1

    def validate(self, value: Any) -> None:
        require(value >= 0, self.path, f"must be >= 0, got {value}")

    def check_spend(self, value: Any, spend: SpendConfig) -> None:
        kept = spend.ticket.rewind_epochs
        if value not in kept:
            raise ConfigError(self.path, f"the draw keeps epochs {list(kept)} of the dense run; {value} is not "
                                         "among them (add it to the ticket's keep_epochs)", ("ticket.keep_epochs",))

    def label(self, value: Any) -> str:
        return f"rewind{value}"

    def start_epoch(self, value: Any) -> int:
        return value


TWEAK = Rewind()
