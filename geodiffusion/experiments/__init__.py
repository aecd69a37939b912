"""Experiments: specs that train, sample and evaluate, writing everything into one folder."""

from geodiffusion.experiments.base import Experiment, ExperimentSpec, merge_spec_dicts, write_json
from geodiffusion.experiments.quickstart import QuickstartExperiment

__all__ = ["Experiment", "ExperimentSpec", "QuickstartExperiment", "merge_spec_dicts", "write_json"]
