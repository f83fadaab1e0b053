"""Training data sources, chosen by the ``type`` of a recipe's ``data`` section."""

from cdm3d.core.registry import Registry

DATASETS: Registry = Registry("dataset")


def load_builtin() -> None:
    """Register the built-in sources (``world.points``, ``shards.points``, ``world.sdf``, ``world.images``)."""
    import cdm3d.training.data.images
    import cdm3d.training.data.points
    import cdm3d.training.data.sdf  # noqa: F401
