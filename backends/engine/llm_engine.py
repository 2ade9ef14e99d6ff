"""The engine loop: add requests, step, abort."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from backends.base import SamplingParams
from backends.engine.block_manager import BlockManager
from backends.engine.capacity.step_time import engine_step_model
from backends.engine.config import EngineConfig
from backends.engine.detokenizer import IncrementalDetokenizer
from backends.engine.metrics import EngineMetrics
from backends.engine.model_runner import ModelRunner, Sampled
from backends.engine.scheduler import ScheduledBatch, Scheduler
from backends.engine.sampling import Logprob
from backends.engine.sequence import Sequence
from backends.engine.structured import Grammars


@dataclass
class RequestOutput:
    """What one step produced for one request: new tokens (and text), and how it ended if it did."""

    request_id: str
    token_ids: list[int]
    text: str = ""
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    gpu_seconds: float = 0.0  # device time attributed to the request so far (all ranks)


@dataclass
class Completion:
    """A whole request's result, for offline generate()."""

    request_id: str
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    cached_tokens: int = 0


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        if config.tensor_parallel_size * config.pipeline_parallel_size > 1:
            from backends.engine.distributed import DistributedRunner

            self.model_runner = DistributedRunner(config)
        else:
            self.model_runner = ModelRunner(config)
        self.block_manager = BlockManager(
            self.model_runner.num_blocks, config.block_size, config.enable_prefix_caching, self.model_runner.num_cpu_blocks
        )
        self.scheduler = Scheduler(config, self.block_manager)
        self.speculator = None
        if config.speculative_method:
            from backends.engine.spec_decode import SpeculativeDecoder

            self.speculator = SpeculativeDecoder(config, self.model_runner, self.block_manager)
        self.tokenizer = _load_tokenizer(config.model)
        self.metrics = EngineMetrics(config.name)
        self.step_cost = engine_step_model(config)  # weighs each sequence's share of a step's measured time
        self.busy_seconds = 0.0  # device-seconds of every step (all ranks): what the requests' gpu_seconds add up to
        eos = config.hf_config.get("eos_token_id")
        self.eos_token_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.grammars: Grammars | None = None  # made on the first structured request
        self.seqs: dict[str, Sequence] = {}
        self.detokenizers: dict[str, IncrementalDetokenizer] = {}

    def check_request(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Raise ValueError for a request the engine cannot serve; safe to call from any thread."""
        if not prompt_token_ids:
            raise ValueError("prompt must have at least one token")
        vocab = self.config.hf_config["vocab_size"]
        if any(not 0 <= t < vocab for t in prompt_token_ids):
            raise ValueError(f"prompt token ids must lie in [0, {vocab})")
        if params.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if params.temperature < 0 or not 0 < params.top_p <= 1:
            raise ValueError("temperature must be >= 0 and top_p in (0, 1]")
        limit = min(self.config.max_model_len, self.model_runner.num_blocks * self.config.block_size)
        if len(prompt_token_ids) + params.max_tokens > limit:
            raise ValueError(
                f"prompt ({len(prompt_token_ids)} tokens) + max_tokens ({params.max_tokens}) exceeds {limit} tokens"
            )
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need the model's tokenizer, and this checkpoint has none")
        self._check_shaping(params, vocab)

    def _check_shaping(self, params: SamplingParams, vocab: int) -> None:
        if params.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be > 0")
        if any(not 0 <= t < vocab for t in params.logit_bias):
            raise ValueError(f"logit_bias token ids must lie in [0, {vocab})")
        if not 0 <= params.top_logprobs <= vocab:
            raise ValueError(f"top_logprobs must lie in [0, {vocab}]")
        if params.structured is not None:
            self._grammars().compile(params.structured)  # compiled once: add_request finds it in the cache

    def _grammars(self) -> Grammars:
        if self.tokenizer is None:
            raise ValueError("structured output needs the model's tokenizer, and this checkpoint has none")
        if self.grammars is None:
            self.grammars = Grammars(self.tokenizer, self.config.hf_config["vocab_size"], sorted(self.eos_token_ids))
        return self.grammars

    def add_request(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, priority: int = 1,
        cache_salt: str | None = None, public_prefix_len: int = 0, weight: int = 1,
    ) -> None:
        if request_id in self.seqs:
            raise ValueError(f"request id {request_id!r} is already running")
        self.check_request(prompt_token_ids, params)
        if weight < 1:
            raise ValueError("a tenant's weight must be at least 1")
        seq = Sequence(request_id, prompt_token_ids, params, priority, cache_salt, public_prefix_len, weight)
        if params.structured is not None:
            seq.matcher = self._grammars().matcher(params.structured)
        self.seqs[request_id] = seq
        if self.tokenizer is not None:
            self.detokenizers[request_id] = IncrementalDetokenizer(self.tokenizer, prompt_token_ids, params.stop)
        self.scheduler.add(seq)

    def step(self) -> list[RequestOutput]:
        start = time.perf_counter()
        plan = self.scheduler.schedule()
        self.model_runner.swap(plan.swap_out, plan.swap_in)
        batch = plan.batch
        if self.speculator is not None:
            batch, sampled = self.speculator.run(batch)
        else:
            sampled = self.model_runner.run(batch)
        self._charge(batch, time.perf_counter() - start)
        outputs = self._postprocess(batch, sampled)
        self.metrics.observe_step(self.scheduler, self.block_manager)
        return outputs

    def abort(self, request_id: str) -> RequestOutput | None:
        """Drop a request at once; its final output, or None if it is not (or no longer) in the engine."""
        seq = self.seqs.pop(request_id, None)
        if seq is None:
            return None
        self.scheduler.finish(seq, "abort")
        self.metrics.observe_finished(seq)
        return self._output(seq, [], None, "abort")

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]) -> list[Completion]:
        """Offline batch generation: every prompt through the engine at once, results in prompt order."""
        params = params if isinstance(params, list) else [params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError("give one SamplingParams, or one per prompt")
        for prompt, p in zip(prompts, params):  # all or nothing: a bad prompt adds no request
            self.check_request(prompt, p)
        results = {str(i): Completion(str(i)) for i in range(len(prompts))}
        for i, (prompt, p) in enumerate(zip(prompts, params)):
            self.add_request(str(i), prompt, p)
        while self.has_unfinished():
            for out in self.step():
                done = results[out.request_id]
                done.token_ids += out.token_ids
                done.text += out.text
                done.logprobs += out.logprobs or []
                done.top_logprobs += out.top_logprobs or []
                done.finish_reason, done.cached_tokens = out.finish_reason, out.cached_tokens
        return list(results.values())

    def _charge(self, batch: ScheduledBatch, seconds: float) -> None:
        """Split the step's device time among its sequences by the step-time model's shares (tokens, KV read)."""
        if not batch:
            return
        device_seconds = seconds * self.config.tensor_parallel_size * self.config.pipeline_parallel_size
        step, shares = self.step_cost.cost([(n, seq.num_computed_tokens) for seq, n in batch])
        for (seq, _), share in zip(batch, shares):
            seq.gpu_seconds += device_seconds * share / step
        self.busy_seconds += device_seconds

    def _postprocess(self, batch: ScheduledBatch, sampled: Sampled) -> list[RequestOutput]:
        self.scheduler.advance(batch)  # the sequences due a token are those the runner sampled for
        now = time.perf_counter()
        outputs = []
        for seq, token, logprob in sampled:
            if seq.is_finished:  # a stop among one step's accepted speculative tokens drops the rest
                continue
            seq.token_ids.append(token)
            self.metrics.observe_token(seq, now)
            reason = self._finish_reason(seq, token)
            if reason:
                self.scheduler.finish(seq, reason)
                self.seqs.pop(seq.request_id)
                self.metrics.observe_finished(seq)
            outputs.append(self._output(seq, [token], logprob, reason))
        return outputs

    def _finish_reason(self, seq: Sequence, token: int) -> str | None:
        p = seq.params
        detok = self.detokenizers.get(seq.request_id)
        if detok is not None and detok.add(token):
            return "stop"
        if seq.matcher is not None and (not seq.matcher.accept_token(token) or seq.matcher.is_terminated()):
            return "stop"  # the grammar is complete (a rejected token cannot be: the mask allowed only valid ones)
        if token in p.stop_token_ids or (not p.ignore_eos and token in self.eos_token_ids):
            return "stop"
        if seq.num_output_tokens >= p.max_tokens or len(seq) >= self.config.max_model_len:
            return "length"
        return None

    def _output(self, seq: Sequence, tokens: list[int], logprob: Logprob | None, reason: str | None) -> RequestOutput:
        detok = self.detokenizers.pop(seq.request_id, None) if reason else self.detokenizers.get(seq.request_id)
        return RequestOutput(
            request_id=seq.request_id,
            token_ids=tokens,
            text=detok.take_delta(finished=reason is not None) if detok else "",
            finished=reason is not None,
            finish_reason=reason,
            logprobs=None if logprob is None else [logprob.logprob],
            top_logprobs=None if logprob is None or not seq.params.top_logprobs else [logprob.top],
            prompt_tokens=seq.num_prompt_tokens,
            completion_tokens=seq.num_output_tokens,
            cached_tokens=seq.num_cached_tokens or 0,
            gpu_seconds=seq.gpu_seconds,
        )


def _load_tokenizer(path: str):
    if not (Path(path) / "tokenizer.json").is_file() and not (Path(path) / "tokenizer_config.json").is_file():
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)
