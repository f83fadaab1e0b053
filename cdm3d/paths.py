"""Where cdm3d's shipped files live (no imports: the CLI reads this at start-up). They are package data, so
they resolve from any working directory after a plain ``pip install``."""

from pathlib import Path

WEIGHTS = Path(__file__).parent / "weights"
DEFAULT_MODEL = WEIGHTS / "default"
DEFAULT_IMAGE_MODEL = WEIGHTS / "images"
# The instruments of the evaluation: classifiers of the world's category and colour (cdm3d/eval/classifier.py).
POINT_CLASSIFIER = WEIGHTS / "eval" / "point_classifier.safetensors"
IMAGE_CLASSIFIER = WEIGHTS / "eval" / "image_classifier.safetensors"
