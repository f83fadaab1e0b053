"""Where cdm3d's shipped files live (no imports: the CLI reads this at start-up)."""

from pathlib import Path

DEFAULT_MODEL = Path(__file__).parent / "weights" / "default"
DEFAULT_IMAGE_MODEL = Path(__file__).parent / "weights" / "images"
