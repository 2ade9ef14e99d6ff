"""Ferryman's own inference engine: paged KV cache, continuous batching, prefix reuse."""
from backends.engine.async_engine import EngineBackend
from backends.engine.config import EngineConfig
from backends.engine.llm_engine import Completion, LLMEngine, RequestOutput

__all__ = ["Completion", "EngineBackend", "EngineConfig", "LLMEngine", "RequestOutput"]
