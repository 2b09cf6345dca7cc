"""The compression search: an Optuna study in which every trial compresses a copy of the
network. ``spec`` (what to search), ``space`` (the only module that calls ``trial.suggest_*``),
``objective`` (one trial), ``run`` (workers, resume), ``storage``, ``report``."""

from autoprune.search.run import run_search
from autoprune.search.spec import StudySpec, load_spec, spec_from_dict

__all__ = ["StudySpec", "load_spec", "run_search", "spec_from_dict"]
