"""Stage plugins (points, mesh, images). Each registers its ``type`` in ``cdm3d.core.STAGES``.

Installed packages find them through the ``cdm3d.stages`` entry points;
:func:`load_builtin` registers them directly (for a source tree that is not
installed, such as a copied working tree on a training machine).
"""


def load_builtin() -> None:
    import cdm3d.stages.images
    import cdm3d.stages.mesh
    import cdm3d.stages.points  # noqa: F401
