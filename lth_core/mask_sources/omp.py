"""One-shot magnitude pruning: every level straight from the trained dense net."""

from __future__ import annotations

from lth_core.mask_sources.imp import IMP


class OMP(IMP):
    name = "omp"
    summary = "one-shot magnitude pruning of the trained dense net to each level's sparsity"
    reference = "Frankle & Carbin 2019 (one-shot pruning); Han et al. 2015, Learning both Weights and Connections"
    weights = "dense"


SOURCE = OMP()
