"""Ferryman's own inference engine: paged KV cache, continuous batching, prefix reuse.

Offline:

    engine = LLMEngine(EngineConfig("models/large", max_num_seqs=64, max_num_batched_tokens=512))
    completions = engine.generate([prompt_ids, ...], SamplingParams(max_tokens=64, temperature=0))

Step by step (what the serving loop does): `add_request(request_id, prompt_token_ids, params, priority)`,
then `step()` until `has_unfinished()` is false; each step returns a `RequestOutput` per request that got
a token (new token ids, text delta, finished, finish_reason, usage counts). `abort(request_id)` drops one.

Serving: `EngineBackend(name, config)` speaks backends.base.Backend: `async for delta in
backend.generate(GenerationRequest(...))`, `await backend.abort(request_id)`, `await backend.stop()`.
One worker thread steps the engine for every stream at once.

Speculative decoding: `EngineConfig("models/large", speculative_method="draft", speculative_model="models/small",
num_speculative_tokens=4)`, or `speculative_method="ngram"` (prompt lookup, no draft model); the output is
the target's (greedy: token for token), a step may return several tokens per request. Metrics (`ferryman_engine_*`, labelled by
model) live in prometheus_client's default registry.
"""
from backends.engine.async_engine import EngineBackend
from backends.engine.config import EngineConfig
from backends.engine.llm_engine import Completion, LLMEngine, RequestOutput

__all__ = ["Completion", "EngineBackend", "EngineConfig", "LLMEngine", "RequestOutput"]
