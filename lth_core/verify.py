"""Check a whole store: every artifact against its checksum and shape, every finished draw and
spend for the files they consist of, and what lies around that belongs to nothing.

    python -m lth_core verify --store URI            # report; exit 0 when sound, 1 when not
    python -m lth_core verify --store URI --repair   # also remove what is corrupt or left over

A finding is one of:
- corrupt: a file whose checksum or JSON shape is wrong (a repair deletes it: the next draw or
  spend that needs it recomputes it, and exactly what depends on it);
- missing: a file a finished draw or spend consists of is not there (a repair deletes the
  finished mark, `summary.json` or `result.json`, so the next run completes it);
- orphaned: a leftover of an interrupted write (data without checksum, a checksum without data,
  a temporary file), or a folder that is not a draw or spend of this layout (a repair deletes
  the leftovers; it never deletes a folder it does not know).
In-progress work (a checkpoint, a draw without its summary yet) is listed but is not a fault.
Run a repair while nothing writes to the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lth_core import lottery, paths
from lth_core.config import SpendConfig, TicketConfig, from_dict
from lth_core.store import ArtifactStore, CorruptArtifactError

FAULTS = ("corrupt", "missing", "orphaned")


@dataclass(frozen=True)
class Finding:
    kind: str  # corrupt | missing | orphaned | in progress
    path: str
    detail: str
    repair: str | None = None  # the store path a repair deletes (None: nothing to delete)


def scan(store: ArtifactStore) -> list[Finding]:
    """Every finding in the store, sorted by path."""
    findings = [Finding("orphaned", p, "leftover of an interrupted write", repair=p) for p in store.leftovers()]
    artifacts = store.list()
    findings += [Finding("corrupt", p, "checksum does not match", repair=p) for p in artifacts if not store.verify(p)]
    corrupt = {f.path for f in findings}
    folders = sorted({"/".join(p.split("/")[:2]) for p in artifacts})
    for folder in folders:
        top, key = folder.split("/", 1) if "/" in folder else (folder, "")
        if top == paths.TICKETS and key:
            findings += _ticket(store, key, corrupt)
        elif top == paths.SPENDS and key:
            findings += _spend(store, key, corrupt)
        else:
            findings.append(Finding("orphaned", folder, "not a draw or spend of this store's layout"))
    return sorted(set(findings), key=lambda f: (f.path, f.kind))


def repair(store: ArtifactStore, findings: list[Finding]) -> list[Finding]:
    """Delete what each faulty finding names; returns the findings repaired."""
    leftovers = set(store.leftovers())
    done = []
    for finding in findings:
        if finding.kind not in FAULTS or finding.repair is None:
            continue
        if finding.repair in leftovers:
            store.delete_leftover(finding.repair)
        else:
            store.delete(finding.repair)
        done.append(finding)
    return done


def _ticket(store: ArtifactStore, key: str, corrupt: set[str]) -> list[Finding]:
    summary_path = paths.ticket_summary(key)
    config = _json(store, paths.ticket_config(key), {"key": str, "config": dict})
    if isinstance(config, Finding):
        return [] if config.path in corrupt else [config]
    try:
        ticket = from_dict(TicketConfig, config["config"])
    except ValueError as e:
        return [Finding("corrupt", paths.ticket_config(key), _first_line(e), repair=paths.ticket_config(key))]
    if ticket.key != key:
        return [Finding("orphaned", paths.ticket_dir(key), f"its config has key {ticket.key}: not this folder's")]
    if not store.exists(summary_path):
        return [Finding("in progress", paths.ticket_dir(key), "a draw without its summary yet (run it to finish)")]
    summary = _json(store, summary_path, lottery.SUMMARY_SHAPE)
    if isinstance(summary, Finding):
        return [] if summary.path in corrupt else [summary]
    return [_file_finding(store, p, "draw", summary_path) for p in lottery.draw_problems(ticket, store)
            if p not in corrupt]


def _spend(store: ArtifactStore, key: str, corrupt: set[str]) -> list[Finding]:
    result_path = paths.spend_result(key)
    findings = []
    if store.exists(paths.spend_checkpoint(key)):
        findings.append(Finding("in progress", paths.spend_checkpoint(key), "a spend's checkpoint (run it to finish)"))
    if not store.exists(result_path):
        return findings
    result = _json(store, result_path, lottery.RESULT_SHAPE)
    if isinstance(result, Finding):
        return findings + ([] if result.path in corrupt else [result])
    try:
        spend = from_dict(SpendConfig, result.get("config", {}))
    except ValueError as e:
        return findings + [Finding("corrupt", result_path, f"config: {_first_line(e)}", repair=result_path)]
    if spend.key != key or result["spend_key"] != key:
        findings.append(Finding("orphaned", paths.spend_dir(key), f"its result is for spend {spend.key}"))
    files = [paths.spend_weights(key), *(paths.spend_snapshot(key, e) for e in result.get("snapshots", []))]
    findings += [_file_finding(store, path, "spend", result_path) for path in files
                 if path not in corrupt and not store.verify(path)]
    return findings


def _json(store: ArtifactStore, path: str, shape: dict[str, type]) -> Any:
    """The document, or the Finding that says why it cannot be used."""
    try:
        return lottery.read_json_checked(store, path, shape)
    except FileNotFoundError:
        return Finding("missing", path, "not there")
    except (CorruptArtifactError, ValueError) as e:
        return Finding("corrupt", path, _first_line(e), repair=path)


def _file_finding(store: ArtifactStore, path: str, owner: str, finished_mark: str) -> Finding:
    """A file of a finished draw or spend (`owner`) that is unusable: corrupt (delete it) or
    missing (delete the finished mark, so the next run notices and recomputes it)."""
    if store.exists(path):
        return Finding("corrupt", path, "checksum or content does not match", repair=path)
    return Finding("missing", path, f"part of a finished {owner}", repair=finished_mark)


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0][:160] if str(error) else type(error).__name__


def report(findings: list[Finding], repaired: list[Finding]) -> str:
    """The findings as lines for a person, and one closing line."""
    fixed = set(repaired)
    lines = [f"{f.kind:<12} {f.path}  ({f.detail}){'  -> removed' if f in fixed else ''}" for f in findings]
    faults = [f for f in findings if f.kind in FAULTS]
    if not faults:
        lines.append("the store is sound" + (f" ({len(findings)} in progress)" if findings else ""))
    elif repaired:
        lines.append(f"{len(faults)} fault(s); {len(repaired)} removed: the next draw or spend recomputes them")
    else:
        lines.append(f"{len(faults)} fault(s): rerun with --repair to remove them, so the next run recomputes them")
    return "\n".join(lines)
