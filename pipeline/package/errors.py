"""Why a deployment package was not built."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["ManifestValidationError", "PackageError", "PackageRefused"]


class PackageError(RuntimeError):
    """The package cannot be built from this run (the message names the file or input)."""


class PackageRefused(PackageError):
    """The run's decision does not allow a deployment package."""

    def __init__(self, decision: object, message: str | None = None) -> None:
        self.decision = decision
        super().__init__(
            message
            or (
                f"no deployment package for decision {decision!r}: a package is built only "
                "for APPROVED or CONDITIONAL_APPROVAL"
            )
        )


class ManifestValidationError(PackageError):
    """One or more manifests failed validation; `messages` name the file of each failure."""

    def __init__(self, messages: Sequence[str]) -> None:
        self.messages = tuple(messages)
        super().__init__(
            f"{len(self.messages)} manifest problem(s):\n  " + "\n  ".join(self.messages)
        )
