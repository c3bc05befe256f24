"""The one exception type of :mod:`pipeline.build`."""

from __future__ import annotations

__all__ = ["BuildError"]


class BuildError(Exception):
    """A model could not be built, imported or validated.

    The message names the model, the file involved and what was expected, e.g.
    ``model 'm': sha256 mismatch for /x/m.pt: expected abc..., got def...``.
    """
