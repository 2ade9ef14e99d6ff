"""Speculative decoding: a cheap proposer guesses k tokens, the target checks them all in one forward pass.

Proposers: the distilled small model (DraftModelProposer: its own ModelRunner and KV blocks) or prompt
lookup (NgramProposer: the tokens that followed the latest earlier occurrence of the sequence's last n-gram).
The target verifies a sequence's last token plus its k drafts as one k+1-token chunk over the paged cache
(the chunked-prefill path), so one forward yields k+1 next-token distributions.

Rejection sampling (Leviathan et al. 2023, Chen et al. 2023) keeps the output exactly the target's: draft x
is accepted with probability min(1, p(x)/q(x)); the first rejected one is replaced by a draw from
norm(max(0, p - q)); if all k pass, a bonus token comes from p. Greedy requests accept while the draft equals
the target's argmax, so their tokens are those of plain decoding. Rejected drafts are rolled back: dropped
from the sequence, their trailing blocks freed, and no block holding one ever enters the prefix cache.

Speculation pays only while the target's forward is bound by weight reads, not compute: with more than
speculative_max_batch_size decoding sequences it is off, and k follows the moving mean accepted length
(one more than is typically accepted); under speculative_min_acceptance it pauses, probing one step in 16.
"""
from __future__ import annotations

import dataclasses

import torch

from backends.engine.block_manager import BlockManager
from backends.engine.config import EngineConfig
from backends.engine.model_runner import ModelRunner, Sampled
from backends.engine.sampling import Logprob, _filtered_probs, sample
from backends.engine.scheduler import ScheduledBatch
from backends.engine.sequence import Sequence

PROBE_EVERY = 16  # steps between probes while the acceptance rate says speculation does not pay
EMA = 0.9  # weight of the past in the moving acceptance figures


@dataclasses.dataclass
class Proposal:
    tokens: list[int]
    q: torch.Tensor | None  # [len(tokens), vocab] the draft's distributions; None: greedy, or one-hot (n-gram)


class NgramProposer:
    """Prompt lookup: continue the sequence as it continued after the last earlier match of its final n tokens."""

    def __init__(self, max_ngram: int = 3) -> None:
        self.max_ngram = max_ngram

    def propose(self, seqs: list[Sequence], ks: list[int]) -> list[Proposal]:
        return [Proposal(self._lookup(seq.token_ids, k), None) for seq, k in zip(seqs, ks)]

    def release(self, live: set[int]) -> None:
        pass

    def _lookup(self, tokens: list[int], k: int) -> list[int]:
        for n in range(min(self.max_ngram, len(tokens) - 1), 0, -1):
            tail, best = tokens[-n:], []
            for start in range(len(tokens) - n - 1, -1, -1):  # the latest match first: the freshest context
                if tokens[start : start + n] == tail:
                    found = tokens[start + n : start + n + k]
                    best = found if len(found) > len(best) else best
                    if len(best) == k:  # a match near the end may leave too few tokens to follow: look further back
                        break
            if best:
                return best
        return []


class DraftModelProposer:
    """The small model proposes: each target sequence has a shadow sequence with its own blocks in the draft's cache."""

    def __init__(self, config: EngineConfig, num_blocks: int) -> None:
        # Unquantized: the draft is small already, and int4 groups need not divide its narrow layers.
        draft = EngineConfig(
            model=config.speculative_model, block_size=config.block_size, num_kv_blocks=num_blocks,
            max_model_len=config.max_model_len, enable_prefix_caching=False, dtype=config.dtype, device=config.device,
            num_threads=config.num_threads,
        )
        self.runner = ModelRunner(draft)
        self.block_manager = BlockManager(num_blocks, config.block_size, enable_prefix_caching=False)
        self.shadows: dict[int, Sequence] = {}

    def propose(self, seqs: list[Sequence], ks: list[int]) -> list[Proposal]:
        shadows = [self._sync(seq) for seq in seqs]
        proposals = {s.seq_id: Proposal([], None) for s in shadows}
        qs: dict[int, list[torch.Tensor]] = {s.seq_id: [] for s in shadows}
        for step in range(max(ks)):
            batch = [(s, s.num_uncomputed_tokens) for s, k in zip(shadows, ks) if step < k and s.seq_id in proposals]
            batch = [(s, n) for s, n in batch if self._reserve(s, n, proposals)]
            if not batch:
                break
            logits, done = self.runner.execute(batch)
            for s, n in batch:
                s.num_computed_tokens += n
            for s, token, q in zip(done, *_draw(logits, done)):
                s.token_ids.append(token)
                proposals[s.seq_id].tokens.append(token)
                qs[s.seq_id].append(q)
        out = []
        for s in shadows:
            p = proposals.get(s.seq_id, Proposal([], None))
            greedy = s.params.temperature == 0 or not p.tokens
            out.append(Proposal(p.tokens, None if greedy else torch.stack(qs[s.seq_id])))
        return out

    def release(self, live: set[int]) -> None:
        """Free the shadows of sequences no longer running (finished, aborted or preempted)."""
        for seq_id in [i for i in self.shadows if i not in live]:
            self.block_manager.free(self.shadows.pop(seq_id))

    def _sync(self, seq: Sequence) -> Sequence:
        """The shadow of seq, its cache kept for the tokens it shares with seq (accepted drafts included)."""
        shadow = self.shadows.get(seq.seq_id)
        if shadow is None:
            shadow = self.shadows[seq.seq_id] = Sequence(seq.request_id, seq.token_ids, seq.params)
            shadow.seq_id, shadow.generator = seq.seq_id, seq.generator
        common = 0
        for a, b in zip(shadow.token_ids, seq.token_ids):
            if a != b:
                break
            common += 1
        self.block_manager.truncate(shadow, min(common, len(seq) - 1))
        shadow.token_ids = list(seq.token_ids)
        return shadow

    def _reserve(self, shadow: Sequence, n: int, proposals: dict) -> bool:
        if self.block_manager.can_append(shadow, n):
            self.block_manager.append(shadow, n)
            return True
        proposals.pop(shadow.seq_id)  # out of draft blocks: this sequence decodes plainly this step
        self.block_manager.free(self.shadows.pop(shadow.seq_id))
        return False


def _draw(logits: torch.Tensor, seqs: list[Sequence]) -> tuple[list[int], list[torch.Tensor | None]]:
    """Draft tokens: the argmax for greedy requests, else a draw from q (the request's own filters applied)."""
    tokens, qs = logits.argmax(dim=-1).tolist(), [None] * len(seqs)
    for i, seq in enumerate(seqs):
        if seq.params.temperature > 0:
            qs[i] = _filtered_probs(logits[i : i + 1].float(), [seq.params])[0].cpu()
            tokens[i] = int(torch.multinomial(qs[i], 1, generator=seq.generator))
    return tokens, qs


def verify(logits: torch.Tensor, proposal: Proposal, seq: Sequence) -> list[int]:
    """The tokens the target emits for one sequence: accepted drafts, then a correction or bonus token.

    logits: [k+1, vocab], the target's at the sequence's last token and at each of its k drafts."""
    if seq.params.temperature == 0:
        target = logits.argmax(dim=-1).tolist()
        accepted = 0
        while accepted < len(proposal.tokens) and proposal.tokens[accepted] == target[accepted]:
            accepted += 1
        return proposal.tokens[:accepted] + [target[accepted]]
    p = _filtered_probs(logits.float(), [seq.params] * len(logits)).cpu()
    q = proposal.q if proposal.q is not None else _one_hot(proposal.tokens, p.shape[1])
    return rejection_sample(p, q, proposal.tokens, seq.generator)


def rejection_sample(p: torch.Tensor, q: torch.Tensor, draft: list[int], generator: torch.Generator) -> list[int]:
    """p: [k+1, V] target, q: [k, V] draft distributions; draft[i] was drawn from q[i]. Output follows p exactly."""
    for i, x in enumerate(draft):
        if torch.rand((), generator=generator) * q[i, x] < p[i, x]:  # accepted with probability min(1, p/q)
            continue
        residual = (p[i] - q[i]).clamp_min(0)
        if residual.sum() <= 0:  # p == q up to rounding: the residual is empty, p itself is the right law
            residual = p[i]
        return draft[:i] + [int(torch.multinomial(residual, 1, generator=generator))]
    return draft + [int(torch.multinomial(p[len(draft)], 1, generator=generator))]


def _reshaped(params) -> bool:
    return params.shapes_logits() or params.top_logprobs > 0


def _logprobs(logits: torch.Tensor, tokens: list[int], seq: Sequence) -> list[Logprob | None]:
    if not seq.params.logprobs:
        return [None] * len(tokens)
    logprobs = torch.log_softmax(logits[: len(tokens)].float(), dim=-1)
    return [Logprob(x, []) for x in logprobs[torch.arange(len(tokens)), torch.tensor(tokens)].tolist()]


def _one_hot(tokens: list[int], vocab: int) -> torch.Tensor:
    q = torch.zeros(len(tokens), vocab)
    q[torch.arange(len(tokens)), torch.tensor(tokens, dtype=torch.long)] = 1.0
    return q


class SpeculativeDecoder:
    """Runs a step with speculation where it pays, plain decoding otherwise."""

    def __init__(self, config: EngineConfig, runner: ModelRunner, block_manager: BlockManager) -> None:
        self.runner, self.block_manager = runner, block_manager
        self.max_k = config.num_speculative_tokens
        self.max_batch_size = config.speculative_max_batch_size
        self.min_acceptance = config.speculative_min_acceptance
        self.max_model_len = config.max_model_len
        if config.speculative_method == "draft":
            self.proposer: NgramProposer | DraftModelProposer = DraftModelProposer(config, runner.num_blocks)
        else:
            self.proposer = NgramProposer()
        self.acceptance = 1.0  # moving fraction of proposed tokens accepted
        self.accepted_len = float(self.max_k)  # moving mean of accepted drafts per verified sequence
        self.num_steps = 0
        self.num_draft_tokens = 0  # totals, for benchmarks and metrics
        self.num_accepted_tokens = 0
        self.num_verified = 0  # sequence-steps that ran a verification

    @property
    def k(self) -> int:
        return max(1, min(self.max_k, round(self.accepted_len) + 1))

    def run(self, batch: ScheduledBatch) -> tuple[ScheduledBatch, Sampled]:
        """Like ModelRunner.run; each verified sequence's entry counts its accepted tokens and it yields several."""
        self.num_steps += 1
        self.proposer.release({s.seq_id for s, _ in batch})
        # Drafts are verified against the model's own distribution: a request that reshapes it (penalties, bias,
        # grammar) or asks for alternatives is decoded plainly.
        decodes = [s for s, n in batch if n == s.num_uncomputed_tokens == 1 and not _reshaped(s.params)]
        if not self._pays(len(decodes)):
            return batch, self.runner.run(batch)
        ks = [max(0, min(self.k, s.params.max_tokens - s.num_output_tokens - 1, self.max_model_len - len(s) - 1)) for s in decodes]
        proposals = {s.seq_id: p for s, p in zip(decodes, self.proposer.propose(decodes, ks)) if p.tokens}
        proposals = {i: p for i, p in proposals.items() if self._extend(self._seq(batch, i), p)}
        batch = [(s, n + len(proposals[s.seq_id].tokens) if s.seq_id in proposals else n) for s, n in batch]
        logits, seqs, verify_logits = self.runner.execute_verify(batch, set(proposals))
        batch, emitted = self._accept(batch, proposals, verify_logits)
        plain = [i for i, s in enumerate(seqs) if s.seq_id not in proposals]
        return batch, emitted + self._sample(logits[plain], [seqs[i] for i in plain])

    def _pays(self, num_decodes: int) -> bool:
        if not num_decodes or num_decodes > self.max_batch_size:
            return False
        return self.acceptance >= self.min_acceptance or self.num_steps % PROBE_EVERY == 0

    def _seq(self, batch: ScheduledBatch, seq_id: int) -> Sequence:
        return next(s for s, _ in batch if s.seq_id == seq_id)

    def _extend(self, seq: Sequence, proposal: Proposal) -> bool:
        """Give the drafts cache slots and append them to seq for the verifying forward; False when blocks run out."""
        if not self.block_manager.can_append(seq, 1 + len(proposal.tokens)):
            return False
        self.block_manager.append(seq, 1 + len(proposal.tokens))
        seq.token_ids += proposal.tokens
        return True

    def _accept(self, batch: ScheduledBatch, proposals: dict[int, Proposal], logits: dict[int, torch.Tensor]) -> tuple[ScheduledBatch, Sampled]:
        """Verify, roll back, emit: a verified sequence's entry becomes 1 + its accepted drafts, its tokens emitted."""
        out: ScheduledBatch = []
        emitted: Sampled = []
        for seq, n in batch:
            proposal = proposals.get(seq.seq_id)
            if proposal is None:
                out.append((seq, n))
                continue
            k = len(proposal.tokens)
            tokens = verify(logits[seq.seq_id], proposal, seq)
            base = len(seq) - k  # the sequence's length before its drafts
            self.block_manager.truncate(seq, base + len(tokens) - 1)  # rejected drafts' slots go back
            del seq.token_ids[base:]  # the accepted drafts come back one by one, emitted with the last token
            emitted += zip([seq] * len(tokens), tokens, _logprobs(logits[seq.seq_id], tokens, seq))
            self._observe(k, len(tokens) - 1)
            out.append((seq, len(tokens)))
        return out, emitted

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> Sampled:
        if not seqs:
            return []
        tokens, logprobs = sample(logits, seqs)
        return list(zip(seqs, tokens, logprobs or [None] * len(seqs)))

    def _observe(self, k: int, accepted: int) -> None:
        self.num_draft_tokens += k
        self.num_accepted_tokens += accepted
        self.num_verified += 1
        self.acceptance = EMA * self.acceptance + (1 - EMA) * accepted / k
        self.accepted_len = EMA * self.accepted_len + (1 - EMA) * accepted
