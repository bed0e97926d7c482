"""The MLflow layout, owned in one place (docs/tracking.md).

- `tracking.layout`: the names: experiments, run names, tags, params, per-epoch and final metrics.
- `tracking.probe`: `check_reachable` (the one health probe) and `redact` (the one password mask).
- `tracking.runs`: writing: the sweep's parent run, a trial's child run (`TrialRun`), params.
- `tracking.reader`: reading, for the dashboards: an experiment's runs, histories, final results.

Neither Ray nor `lth_core.lottery` is imported here: the trainables and the sweeps use this
package, not the other way round.
"""
