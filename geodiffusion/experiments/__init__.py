"""Experiments: specs that train, sample and evaluate, writing everything into one folder."""

from geodiffusion.experiments.base import (
    Experiment,
    ExperimentSpec,
    ManifoldExperimentSpec,
    ManifoldTrainingSpec,
    merge_spec_dicts,
    write_json,
)
from geodiffusion.experiments.conformers import (
    ConformersQM9Experiment,
    SkeletonsExperiment,
    generate_conformers,
    load_run_model,
)
from geodiffusion.experiments.earth import EarthEarthquake, EarthExperiment, EarthFire, EarthFlood, EarthVolcano
from geodiffusion.experiments.gp import GP1DExperiment, SphereTracksExperiment, VectorField2DExperiment
from geodiffusion.experiments.hypersphere import HypersphereExperiment, VMFMixture
from geodiffusion.experiments.images import BridgeDenoiseExperiment, BridgeStyleExperiment, RotatedDigitsExperiment
from geodiffusion.experiments.lie import SO3MixtureExperiment, SU3LatticeExperiment
from geodiffusion.experiments.quickstart import QuickstartExperiment

__all__ = [
    "EarthExperiment",
    "EarthVolcano",
    "EarthEarthquake",
    "EarthFlood",
    "EarthFire",
    "Experiment",
    "HypersphereExperiment",
    "VMFMixture",
    "ExperimentSpec",
    "ManifoldExperimentSpec",
    "ManifoldTrainingSpec",
    "QuickstartExperiment",
    "SO3MixtureExperiment",
    "SU3LatticeExperiment",
    "merge_spec_dicts",
    "write_json",
]
__all__ += ["RotatedDigitsExperiment", "BridgeDenoiseExperiment", "BridgeStyleExperiment"]
__all__ += ["GP1DExperiment", "VectorField2DExperiment", "SphereTracksExperiment"]
__all__ += ["ConformersQM9Experiment", "SkeletonsExperiment", "generate_conformers", "load_run_model"]
