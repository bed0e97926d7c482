"""Check a whole store: every artifact against its checksum and shape, every finished draw and
spend for the files they consist of, and what lies around that belongs to nothing.

    python -m lth_core verify --store URI            # report; exit 0 when sound, 1 when not
    python -m lth_core verify --store URI --repair   # also remove what is corrupt or left over

A folder that has not the store's layout (no `tickets/`, `spends/` or `locks/` in it, and not
empty) is refused before anything is read or deleted (`NotAStoreError`), also through a link.
Inside a store only the files of the layout (`paths.is_layout_file`) are the store's; every other
file is listed as "not the store's" and never deleted. A finding is one of:
- corrupt: a file of the layout whose checksum or JSON shape is wrong (a repair deletes it, and
  the finished mark of its draw or spend, `summary.json` or `result.json`: the next draw or spend
  recomputes it, and exactly what depends on it);
- missing: a file a finished draw or spend consists of is not there (a repair deletes the
  finished mark, so the next run completes it);
- orphaned: a leftover of an interrupted write of a layout file (data without checksum, a checksum
  without data, a temporary file: a repair deletes it), or a draw folder holding another draw's
  config (a repair leaves it to you).
Not faults: a draw or spend in progress (or interrupted: run it again to finish it), a draw that
failed for good (its error, from `paths.ticket_failure`), and the files that are not the store's.
After a repair the store is scanned again: the exit status and the closing line say what is left.
Run a repair while nothing writes to the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lth_core import lottery, paths
from lth_core.config import SpendConfig, TicketConfig, from_dict
from lth_core.store import LOCKS_DIR, ArtifactStore, CorruptArtifactError

FAULTS = ("corrupt", "missing", "orphaned")
IN_PROGRESS, FAILED, NOT_OURS = "in progress", "failed", "not the store's"
CONFIG_SHAPE = {"key": str, "config": dict}
STORE_FOLDERS = (paths.TICKETS, paths.SPENDS, LOCKS_DIR)


class NotAStoreError(ValueError):
    """The folder given as a store has not the store's layout: nothing in it is touched."""


@dataclass(frozen=True)
class Finding:
    kind: str  # corrupt | missing | orphaned | in progress | failed | not the store's
    path: str
    detail: str
    removes: tuple[str, ...] = ()  # the layout files a repair deletes (none: a repair leaves it)


def check_layout(store: ArtifactStore) -> None:
    """Raise NotAStoreError unless the store's root is empty or holds one of its folders: a repair
    of a folder that is no store would take every file in it for a leftover."""
    entries = store.children()
    if entries and not set(entries) & set(STORE_FOLDERS):
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        names = [f"{folder}/" for folder in STORE_FOLDERS]
        raise NotAStoreError(f"{store.local_path() or store.uri} is not an artifact store: it has no "
                             f"{', '.join(names[:-1])} or {names[-1]} folder (it holds {shown})")


def scan(store: ArtifactStore) -> list[Finding]:
    """Every finding in the store, sorted by path (after `check_layout`)."""
    check_layout(store)
    findings = []
    for path, artifact in store.leftovers().items():
        if paths.is_layout_file(artifact):
            findings.append(Finding("orphaned", path, "leftover of an interrupted write", removes=(path,)))
        else:
            findings.append(Finding(NOT_OURS, path, "no file of the store's layout: kept"))
    artifacts = store.list()
    ours = [p for p in artifacts if paths.is_layout_file(p)]
    findings += [Finding(NOT_OURS, p, "no file of the store's layout: kept") for p in artifacts if p not in ours]
    corrupt = {p for p in ours if not store.verify(p)}
    findings += [Finding("corrupt", p, "checksum does not match", removes=_with_mark(store, p)) for p in corrupt]
    for folder in sorted({"/".join(p.split("/")[:2]) for p in ours}):
        top, key = folder.split("/")
        findings += _ticket(store, key, corrupt) if top == paths.TICKETS else _spend(store, key, corrupt)
    return sorted(set(findings), key=lambda f: (f.path, f.kind))


def repair(store: ArtifactStore, findings: list[Finding]) -> list[Finding]:
    """Delete the layout files each faulty finding names; returns the findings repaired."""
    leftovers = store.leftovers()
    done = []
    for finding in findings:
        if finding.kind not in FAULTS or not finding.removes:
            continue
        for path in finding.removes:
            if path in leftovers:
                store.delete_leftover(path)
            else:
                store.delete(path)
        done.append(finding)
    return done


def _with_mark(store: ArtifactStore, path: str) -> tuple[str, ...]:
    """`path` and, when its draw or spend is finished, the finished mark: the next run then checks
    the draw or spend and recomputes the file, instead of reading a finished one that lacks it."""
    mark = paths.finished_mark(path)
    return (path,) if mark == path or not store.exists(mark) else (path, mark)


def _ticket(store: ArtifactStore, key: str, corrupt: set[str]) -> list[Finding]:
    summary_path, config_path = paths.ticket_summary(key), paths.ticket_config(key)
    finished = store.exists(summary_path) and summary_path not in corrupt
    config = _json(store, config_path, CONFIG_SHAPE, finished)
    if isinstance(config, Finding):
        if config.path in corrupt:
            return []
        return [config if config.kind != "missing" or finished else _unfinished(store, key)]
    try:
        ticket = from_dict(TicketConfig, config["config"])
    except ValueError as e:
        return [Finding("corrupt", config_path, _first_line(e), removes=_with_mark(store, config_path))]
    if ticket.key != key:
        return [Finding("orphaned", paths.ticket_dir(key), f"its config has key {ticket.key}: not this folder's "
                                                           "(move or delete the folder)")]
    if not finished:
        return [] if summary_path in corrupt else [_unfinished(store, key)]
    summary = _json(store, summary_path, lottery.SUMMARY_SHAPE, finished)
    if isinstance(summary, Finding):
        return [summary]
    return [_file_finding(store, p, "draw", summary_path) for p in lottery.draw_problems(ticket, store)
            if p not in corrupt]


def _unfinished(store: ArtifactStore, key: str) -> Finding:
    """A draw without its summary: failed for good (its failure record says why), or in progress."""
    failure = _json(store, paths.ticket_failure(key), lottery.FAILURE_SHAPE, finished=False)
    if isinstance(failure, Finding):
        return Finding(IN_PROGRESS, paths.ticket_dir(key), "a draw without its summary yet: running now, or "
                                                           "stopped; drawing it again finishes it")
    return Finding(FAILED, paths.ticket_dir(key), f"the draw failed for good: {_first_line(failure['error'])}")


def _spend(store: ArtifactStore, key: str, corrupt: set[str]) -> list[Finding]:
    result_path = paths.spend_result(key)
    findings = []
    if store.exists(paths.spend_checkpoint(key)):
        findings.append(Finding(IN_PROGRESS, paths.spend_checkpoint(key), "a spend's checkpoint: running now, or "
                                                                          "stopped; spending it again finishes it"))
    if not store.exists(result_path) or result_path in corrupt:
        return findings
    result = _json(store, result_path, lottery.RESULT_SHAPE, finished=True)
    if isinstance(result, Finding):
        return findings + [result]
    try:
        spend = from_dict(SpendConfig, result.get("config", {}))
    except ValueError as e:
        return findings + [Finding("corrupt", result_path, f"config: {_first_line(e)}", removes=(result_path,))]
    if spend.key != key or result["spend_key"] != key:
        findings.append(Finding("orphaned", paths.spend_dir(key), f"its result is for spend {spend.key} "
                                                                  "(move or delete the folder)"))
    files = [paths.spend_weights(key), *(paths.spend_snapshot(key, e) for e in result.get("snapshots", []))]
    findings += [_file_finding(store, path, "spend", result_path) for path in files
                 if path not in corrupt and not store.verify(path)]
    return findings


def _json(store: ArtifactStore, path: str, shape: dict[str, type], finished: bool) -> Any:
    """The document, or the Finding that says why it cannot be used (a wrong shape is corrupt: a
    repair removes it, with the finished mark of a finished draw or spend)."""
    try:
        return lottery.read_json_checked(store, path, shape)
    except FileNotFoundError:
        return Finding("missing", path, "not there",
                       removes=(paths.finished_mark(path),) if finished else ())
    except (CorruptArtifactError, ValueError) as e:
        return Finding("corrupt", path, _first_line(e), removes=_with_mark(store, path))


def _file_finding(store: ArtifactStore, path: str, owner: str, finished_mark: str) -> Finding:
    """A file of a finished draw or spend (`owner`) that is unusable: corrupt (delete it and the
    finished mark) or missing (delete the finished mark, so the next run notices and recomputes it)."""
    if store.exists(path):
        return Finding("corrupt", path, "checksum or content does not match", removes=(path, finished_mark))
    return Finding("missing", path, f"part of a finished {owner}", removes=(finished_mark,))


def _first_line(error: Exception | str) -> str:
    text = str(error)
    return text.splitlines()[0][:160] if text else type(error).__name__


def report(findings: list[Finding], repaired: list[Finding], after: list[Finding] | None = None) -> str:
    """The findings as lines for a person, and one closing line: about the store as scanned, or,
    after a repair, as scanned again (`after`)."""
    fixed = set(repaired)
    lines = [f"{f.kind:<15} {f.path}  ({f.detail}){'  -> removed' if f in fixed else ''}" for f in findings]
    state = findings if after is None else after
    faults = [f for f in state if f.kind in FAULTS]
    counts = [f"{n} {kind}" for kind in (IN_PROGRESS, FAILED, NOT_OURS)
              if (n := sum(f.kind == kind for f in state))]
    note = f" ({', '.join(counts)})" if counts else ""
    removed = f"{len(repaired)} fault(s) removed: the next draw or spend recomputes them; " if repaired else ""
    if not faults:
        lines.append(f"{removed}the store is sound{note}")
    elif after is not None:
        lines.append(f"{removed}{len(faults)} fault(s) left that a repair does not remove: "
                     + "; ".join(f"{f.path} ({f.detail})" for f in faults[:3]) + (" ..." if len(faults) > 3 else ""))
    else:
        lines.append(f"{len(faults)} fault(s){note}: rerun with --repair to remove them, so the next run "
                     "recomputes them")
    return "\n".join(lines)
