"""Stage plugins (points, mesh, images). Each registers its ``type`` in ``cdm3d.core.STAGES``."""
