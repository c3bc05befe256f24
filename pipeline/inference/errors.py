"""Errors raised by the inference library. Each message names the input and what was expected."""

from __future__ import annotations

__all__ = [
    "AdmissionRejectedError",
    "DeadlineExceededError",
    "InferenceError",
    "InputRuntimeError",
    "InvalidInputError",
    "ModelLoadError",
    "ModelNotLoadedError",
    "NonFiniteOutputError",
    "NonFiniteWarmupError",
    "PoolExhaustedError",
    "QueueFullError",
]


class InferenceError(Exception):
    """Base class for errors of `pipeline.inference`."""


class ModelLoadError(InferenceError):
    """A model file could not be loaded (missing, corrupt, checksum mismatch, over budget)."""


class NonFiniteWarmupError(ModelLoadError):
    """Warm-up on valid inputs produced NaN or Inf: the model file is defective."""


class ModelNotLoadedError(InferenceError):
    """A request named a model that is not loaded."""


class InvalidInputError(InferenceError):
    """A request's input has the wrong shape, dtype or non-finite values."""


class NonFiniteOutputError(InferenceError):
    """The model answered NaN or Inf for one request's (finite) input: that input is outside
    the range the model handles. The request's error, never a fault of the model."""


class InputRuntimeError(InferenceError):
    """The model's runtime raised on one request's values (an index past an embedding table,
    a data-dependent check in the model) while it answers other inputs: the request's error
    (the service answers 4xx), never a fault of the model, never counted toward its reload."""


class PoolExhaustedError(InferenceError, MemoryError):
    """The memory pool cannot allocate a buffer within `max_pool_size_mb`."""


class QueueFullError(InferenceError):
    """The engine's request queue is full; the request was rejected (load shedding)."""


class DeadlineExceededError(InferenceError):
    """A request's deadline passed before it could be served."""


class AdmissionRejectedError(InferenceError):
    """The concurrency limiter refused a job: too many in flight and waiting."""
