"""What the commands do, as functions a notebook calls the same way: one model at a time
(train, compress_recipe, evaluate_file), a search with every sampler registered, reading
results back out of a study, and the surrogate on a stored study (fit, propose, enqueue,
compare). Sits above ``search`` and ``surrogate``; the CLI is argparse and printing over it and
imports nothing else of autoprune, so the constants and helpers it shares with the layers
below are re-exported here too."""

import autoprune.surrogate  # noqa: F401  (registers the "surrogate" sampler)
from autoprune.data import DataOptions, list_datasets
from autoprune.deploy import CALIBRATION_IMAGES
from autoprune.device import DeviceError, resolve_device, use_device
from autoprune.limits import MAX_BATCH, MAX_EPOCHS, MAX_TRIALS
from autoprune.measure import BUSY
from autoprune.models import list_models
from autoprune.names import bad_study_name, derived_study_name, file_stem
from autoprune.search import stop_on_signals, study_metric, trial_row
from autoprune.search.propose import enqueue_proposals
from autoprune.search.samplers import PRUNERS, list_samplers
from autoprune.search.spec import OBJECTIVES
from autoprune.search.storage import (
    DEFAULT_STORAGE,
    artifact_dir,
    exit_if_storage_lost,
    parse_storage,
    storage_errors,
)
from autoprune.surrogate import ProposeConfig, Surrogate
from autoprune.train import TrainConfig
from autoprune.workflow._dashboard import allowed_hosts, host_checked, serve_dashboard
from autoprune.workflow._export import NOTHING_WITHIN, default_export_path, export_trial, find_trial
from autoprune.workflow._figures import COMPARE_HEADER, compare_png, compare_table, publish
from autoprune.workflow._final import final_summary, finalize, parents
from autoprune.workflow._init import init_spec
from autoprune.workflow._models import (
    BaseRequest,
    compress_recipe,
    evaluate_file,
    load_base,
    load_data,
    train,
)
from autoprune.workflow._report import write_pngs, write_report
from autoprune.workflow._search import (
    DEFAULT_SPEC,
    Interrupted,
    command_prefix,
    dashboard_sources,
    open_stored,
    search,
    search_spec,
    search_summary,
    trials_summary,
)
from autoprune.workflow._sensitivity import (
    SENSITIVITY_ATTR,
    publish_sensitivity,
    sensitivity_png,
    sensitivity_rows,
    stored_sensitivity,
    study_sensitivity,
    zero_shot,
)
from autoprune.workflow._study_figures import Publisher, publish_study, study_figures, summary_note
from autoprune.workflow._surrogate import (
    StudyView,
    compare,
    enqueue,
    fit,
    history,
    open_sources,
    open_view,
    propose_for,
    search_trials,
    size_error,
)

__all__ = [
    "NOTHING_WITHIN",
    # what the commands share with the layers below, so that the CLI imports this package only
    "BUSY",
    "DEFAULT_STORAGE",
    "DataOptions",
    "DeviceError",
    "CALIBRATION_IMAGES",
    "MAX_BATCH",
    "MAX_EPOCHS",
    "MAX_TRIALS",
    "OBJECTIVES",
    "PRUNERS",
    "ProposeConfig",
    "Surrogate",
    "artifact_dir",
    "bad_study_name",
    "derived_study_name",
    "enqueue_proposals",
    "exit_if_storage_lost",
    "file_stem",
    "list_datasets",
    "list_models",
    "parse_storage",
    "resolve_device",
    "stop_on_signals",
    "storage_errors",
    "study_metric",
    "trial_row",
    "use_device",
    # what the commands do
    "dashboard_sources",
    "open_stored",
    "trials_summary",
    "BaseRequest",
    "TrainConfig",
    "compress_recipe",
    "evaluate_file",
    "init_spec",
    "load_base",
    "load_data",
    "train",
    "allowed_hosts",
    "host_checked",
    "serve_dashboard",
    "COMPARE_HEADER",
    "SENSITIVITY_ATTR",
    "DEFAULT_SPEC",
    "Interrupted",
    "Publisher",
    "StudyView",
    "compare",
    "compare_png",
    "compare_table",
    "default_export_path",
    "enqueue",
    "export_trial",
    "final_summary",
    "finalize",
    "find_trial",
    "fit",
    "history",
    "list_samplers",
    "open_sources",
    "open_view",
    "parents",
    "propose_for",
    "publish",
    "publish_study",
    "publish_sensitivity",
    "search",
    "search_spec",
    "search_summary",
    "command_prefix",
    "search_trials",
    "sensitivity_png",
    "size_error",
    "study_figures",
    "summary_note",
    "write_pngs",
    "write_report",
    "sensitivity_rows",
    "stored_sensitivity",
    "study_sensitivity",
    "zero_shot",
]
