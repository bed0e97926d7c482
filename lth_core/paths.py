"""The artifact store's layout: every path inside the store is built here and nowhere else.

Everything a draw produces lives under the ticket's content key, everything a spend
produces under the spend's key (`TicketConfig.key`, `SpendConfig.key`). Each function
takes the key as a string, so a caller holding only a key (`python -m lth_core show
--key ...`) finds the same files as one holding the config:

    tickets/<key>/config.json
    tickets/<key>/live.safetensors                   the live weights (lth_core.live), True = live
    tickets/<key>/dense/rewind_<epoch>.safetensors   weights kept for rewinding (epoch 0 = init)
    tickets/<key>/dense/final.safetensors            the trained dense net (distillation teacher)
    tickets/<key>/dense/metrics.json
    tickets/<key>/dense/checkpoint.pt                the dense run's last epoch, while it trains
    tickets/<key>/level_<k>/mask.safetensors
    tickets/<key>/level_<k>/final.safetensors        IMP prunes level k+1 from these weights
    tickets/<key>/level_<k>/metrics.json             vanilla LTH re-training at that sparsity
    tickets/<key>/level_<k>/checkpoint.pt            the level's last epoch, while it trains
    tickets/<key>/summary.json                       written last: the draw is complete
    tickets/<key>/failed.json                        a draw that failed for good (a layer emptied), until it finishes
    spends/<key>/final.safetensors                   a finished spend's weights (for the analyses)
    spends/<key>/snapshot_<epoch>.safetensors        its weights after that epoch (`snapshot_epochs`)
    spends/<key>/result.json                         a finished spend, written last
    spends/<key>/checkpoint.pt                       the spend's last epoch, while it trains

and the locks `ticket-<key>` and `spend-<key>` (`ArtifactStore.lock`) make draws and spends
single-flight. These files, and nothing else, are the store's (`is_layout_file`): `verify --repair`
deletes nothing outside them.
Stores written with this layout must stay readable: change a string here only
together with a migration of existing stores.
"""

from __future__ import annotations

import re

TICKETS = "tickets"
SPENDS = "spends"


def _key(key: str) -> str:
    """A content key as one path component: refuse anything that would leave its folder."""
    if not isinstance(key, str) or not key or "/" in key or "\\" in key or key.startswith("."):
        raise ValueError(f"not a content key: {key!r}")
    return key


# ---------------------------------------------------------------- tickets (a draw)

def ticket_dir(key: str) -> str:
    """tickets/<key>: everything one draw produces."""
    return f"{TICKETS}/{_key(key)}"


def ticket_config(key: str) -> str:
    """The ticket's config, written first."""
    return f"{ticket_dir(key)}/config.json"


def live_weights(key: str) -> str:
    """The prunable weights an input of the data set's shape can reach (`lth_core.live`)."""
    return f"{ticket_dir(key)}/live.safetensors"


def ticket_summary(key: str) -> str:
    """The draw's summary (dense and per-level accuracy), written last: the draw is complete."""
    return f"{ticket_dir(key)}/summary.json"


def ticket_failure(key: str) -> str:
    """Why a draw failed for good (a schedule that empties a layer): written when it fails, removed
    when it finishes, so that a draw that can never finish is not taken for one in progress."""
    return f"{ticket_dir(key)}/failed.json"


def ticket_lock(key: str) -> str:
    """The name of the lock that makes a draw single-flight (see `ArtifactStore.lock`)."""
    return f"ticket-{_key(key)}"


def dense_dir(key: str) -> str:
    """The dense run of a draw."""
    return f"{ticket_dir(key)}/dense"


def rewind_weights(key: str, epoch: int) -> str:
    """The dense run's weights after `epoch` epochs (0 = the initialisation), kept for rewinding."""
    return f"{dense_dir(key)}/rewind_{epoch:d}.safetensors"


def dense_final(key: str) -> str:
    """The trained dense net (the distillation teacher, IMP level 1's magnitudes)."""
    return f"{dense_dir(key)}/final.safetensors"


def dense_metrics(key: str) -> str:
    """The dense run's summary and per-epoch history."""
    return f"{dense_dir(key)}/metrics.json"


def dense_checkpoint(key: str) -> str:
    """The dense run's per-epoch checkpoint, deleted once the run is finished."""
    return f"{dense_dir(key)}/checkpoint.pt"


def level_dir(key: str, level: int) -> str:
    """Pruning level `level` (1, 2, ...) of a draw."""
    return f"{ticket_dir(key)}/level_{level:d}"


def level_mask(key: str, level: int) -> str:
    """The level's mask (safetensors of booleans)."""
    return f"{level_dir(key, level)}/mask.safetensors"


def level_final(key: str, level: int) -> str:
    """The level's re-trained weights (IMP prunes the next level from them)."""
    return f"{level_dir(key, level)}/final.safetensors"


def level_metrics(key: str, level: int) -> str:
    """Vanilla LTH re-training at the level's sparsity: summary, history, layer sparsity."""
    return f"{level_dir(key, level)}/metrics.json"


def level_checkpoint(key: str, level: int) -> str:
    """The level's per-epoch checkpoint, deleted once the level is finished."""
    return f"{level_dir(key, level)}/checkpoint.pt"


# ---------------------------------------------------------------- spends (a re-training)

def spend_dir(key: str) -> str:
    """spends/<key>: everything one spend produces."""
    return f"{SPENDS}/{_key(key)}"


def spend_weights(key: str) -> str:
    """A finished spend's weights (read by the analyses)."""
    return f"{spend_dir(key)}/final.safetensors"


def spend_snapshot(key: str, epoch: int) -> str:
    """A spend's weights after `epoch` epochs (0 = the starting weights), kept on request
    (`SpendConfig.snapshot_epochs`) for the analyses at an epoch."""
    return f"{spend_dir(key)}/snapshot_{epoch:d}.safetensors"


def spend_result(key: str) -> str:
    """A finished spend's result, written last: the spend is complete."""
    return f"{spend_dir(key)}/result.json"


def spend_checkpoint(key: str) -> str:
    """The spend's per-epoch checkpoint (CLI spends), deleted once the spend is finished."""
    return f"{spend_dir(key)}/checkpoint.pt"


def spend_lock(key: str) -> str:
    """The lock name that makes identical spends single-flight."""
    return f"spend-{_key(key)}"


# ---------------------------------------------------------------- what is the store's

def finished_mark(path: str) -> str:
    """The file whose presence says that the draw or spend a layout file belongs to is finished
    (`ticket_summary`, `spend_result`)."""
    top, key = path.split("/")[:2]
    return ticket_summary(key) if top == TICKETS else spend_result(key)


def _layout_file_pattern() -> re.Pattern[str]:
    """Every file above, for any key, level or epoch: each builder is called with stand-ins, which
    become patterns, so the layout is spelled once (in the builders)."""
    key, number = "KEY", 987654321
    files = [f(key) for f in (ticket_config, ticket_summary, ticket_failure, live_weights, dense_final, dense_metrics,
                              dense_checkpoint, spend_weights, spend_result, spend_checkpoint)]
    files += [f(key, number) for f in (rewind_weights, level_mask, level_final, level_metrics, level_checkpoint,
                                       spend_snapshot)]
    return re.compile("|".join(re.escape(f).replace(key, "[0-9a-f]+").replace(str(number), "[0-9]+")
                               for f in files))


_LAYOUT_FILE = _layout_file_pattern()


def is_layout_file(path: str) -> bool:
    """Whether a store path is a file of this layout: one that draws and spends write. Anything
    else in a store (a user's notes, another tool's files) is not the store's to delete."""
    return _LAYOUT_FILE.fullmatch(path) is not None
