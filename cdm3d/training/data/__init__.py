"""Training data sources, chosen by the ``type`` of a recipe's ``data`` section."""

from cdm3d.core.registry import Registry

DATASETS: Registry = Registry("dataset")
