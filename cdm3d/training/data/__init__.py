"""Training data sources, chosen by the ``type`` of a recipe's ``data`` section."""

from cdm3d.training.data.registry import DATASETS


def load_builtin() -> None:
    """Register the built-in sources (``world.points``, ``shards.points``, ``world.sdf``, ``world.images``,
    ``world.views``, ``world.labelled_points``, ``world.labelled_renders``)."""
    import cdm3d.training.data.images
    import cdm3d.training.data.labels
    import cdm3d.training.data.points
    import cdm3d.training.data.sdf
    import cdm3d.training.data.shards
    import cdm3d.training.data.views  # noqa: F401


__all__ = ["DATASETS", "load_builtin"]
