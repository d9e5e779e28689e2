"""The tune stage: Ray Tune's ASHA over the train stage, a search space in YAML, resumable by name.

    python -m jobs.tune --config tune-natural --data DATA --time-budget-s 3600
    # or from Python:
    from dae.tune import TuneConfig, run
    summary = run(TuneConfig(data="data/CBSD68", base={"model": "cunet"}, space={"lr": {"loguniform": [1e-4, 1e-2]}}))

Modules: :mod:`.space` (the search space: its checks, Tune's domains, a trial's train settings) and
:mod:`.run` (TuneConfig, the trials, the experiment's outputs: tune_results.md/.json, tune.png, best.yaml).
"""

from .run import SAME, TuneConfig, check_config, format_summary, run, trial_config, write_outputs
from .space import check as check_space, overrides, to_tune

__all__ = ["SAME", "TuneConfig", "check_config", "check_space", "format_summary", "overrides", "run", "to_tune",
           "trial_config", "write_outputs"]
