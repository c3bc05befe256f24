"""The in-process inference library shared by every stage of relcert.

Public names follow the design relcert grew from (ARCHITECTURE.md section 3)::

    manager = ProductionModelManager("artifacts/.../models", max_memory_mb=500)
    manager.load_model("quality_predictor_torchscript")
    engine = ProductionInferenceEngine(manager, max_batch_size=32,
                                       memory_pool=MemoryPoolManager(400),
                                       cache=ResultCache(10_000),
                                       monitor=RealTimePerformanceMonitor())
    result = await engine.predict("quality_predictor_torchscript", features)

Every knob of the engine is one field of `EngineSettings` (pipeline/inference/settings.py);
``ProductionInferenceEngine(manager, settings=EngineSettings(max_batch_size=16),
monitor=...)`` configures them all at once and builds the pool and cache they describe.
"""

from pipeline.inference.admission import AdmissionControl, AdmissionSettings
from pipeline.inference.cache import CacheStats, ResultCache
from pipeline.inference.concurrency import ConcurrencyStats, ConcurrentProcessingEngine
from pipeline.inference.engine import InferenceResult, ProductionInferenceEngine
from pipeline.inference.errors import (
    AdmissionRejectedError,
    DeadlineExceededError,
    InferenceError,
    InputRuntimeError,
    InvalidInputError,
    ModelLoadError,
    ModelNotLoadedError,
    NonFiniteOutputError,
    PoolExhaustedError,
    QueueFullError,
)
from pipeline.inference.memory_pool import MemoryPoolManager, MemoryStats
from pipeline.inference.model_manager import LoadedModel, ModelInfo, ProductionModelManager
from pipeline.inference.monitor import PerformanceMetrics, RealTimePerformanceMonitor
from pipeline.inference.runtimes import NullRuntime, OnnxRuntime, TorchScriptRuntime
from pipeline.inference.settings import EngineSettings

__all__ = [
    "AdmissionControl",
    "AdmissionRejectedError",
    "AdmissionSettings",
    "CacheStats",
    "ConcurrencyStats",
    "ConcurrentProcessingEngine",
    "DeadlineExceededError",
    "EngineSettings",
    "InferenceError",
    "InferenceResult",
    "InputRuntimeError",
    "InvalidInputError",
    "LoadedModel",
    "MemoryPoolManager",
    "MemoryStats",
    "ModelInfo",
    "ModelLoadError",
    "ModelNotLoadedError",
    "NonFiniteOutputError",
    "NullRuntime",
    "OnnxRuntime",
    "PerformanceMetrics",
    "PoolExhaustedError",
    "ProductionInferenceEngine",
    "ProductionModelManager",
    "QueueFullError",
    "RealTimePerformanceMonitor",
    "ResultCache",
    "TorchScriptRuntime",
]
