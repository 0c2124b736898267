"""The named errors front ends turn into one line naming the file and the problem."""

from __future__ import annotations

import os


class ImageReadError(ValueError):
    """A file could not be used as an image; the message names the file and why."""

    def __init__(self, path: str | os.PathLike | None, reason: str):
        self.path = str(path) if path is not None else "<upload>"
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ModelFileError(ValueError):
    """A model or checkpoint file is missing, corrupt or not a tumorseg model."""


class FollowUpError(ValueError):
    """Two studies that cannot be compared (another patient, no brain to register): the message says why."""
