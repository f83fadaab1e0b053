"""The registry of training data sources: a recipe's ``data.type`` names one (see ``load_builtin``)."""

from cdm3d.core.registry import Registry

DATASETS: Registry = Registry("dataset")
