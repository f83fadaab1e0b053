"""The errors cdm3d raises for anything a user can get wrong.

Every message says what was wrong and what to do about it. The CLI prints
them as one line (no traceback unless ``--debug``).
"""

from __future__ import annotations

import argparse
from typing import NoReturn


class Cdm3dError(Exception):
    """Base class of every error cdm3d raises on purpose."""


class ConfigError(Cdm3dError, ValueError):
    """A config (YAML or Python) names an unknown type, field, or ill-typed value."""


class CheckpointError(Cdm3dError):
    """A weights file or cascade folder is missing, corrupt, unsafe, or mismatched."""


class InputError(Cdm3dError, ValueError):
    """A prompt, image, tensor, mesh or path given by the user is unusable."""


class UnavailableError(Cdm3dError):
    """Something needed (pretrained weights, an optional library) is not available here."""


class StorageError(InputError, OSError):
    """A file could not be written (missing or unwritable folder, full disk); nothing half-written remains."""


class SamplingError(Cdm3dError):
    """Sampling produced non-finite values (names the stage and the step)."""


class TrainingError(Cdm3dError):
    """Training cannot go on (repeated non-finite losses, a bad resume state)."""


def one_line(prog: str, err: BaseException) -> str:
    """``prog: error: message`` on one line, as the command-line tools print a cdm3d error."""
    return f"{prog}: error: {' '.join(str(err).split())}"


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` whose usage errors are one line too: ``prog: error: ... (see --help)``, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
