"""Online Hedge mixture of the model with n-gram experts, as a score-first eval adapter
(docs/techniques.md §10; PR #688, used by PR #733).

Experts, each a full normalized distribution over the V tokens, built only from targets
already observed (scored) and looked up from each scored position's history
(x_{t-1}, x_t), the input token x_t and the one before it:

    neural    p_0(y) = the incoming distribution (the model, after TTT if enabled)
    unigram   p_1(y) = (n(y) + a1) / (N + a1 V)                              a1 = 0.1
    bigram    p_2(y) = (n(x_t, y) + a2) / (n(x_t, .) + a2 V)                a2 = 0.1
    trigram   p_3(y) = (n(h, y) + a3) / (n(h, .) + a3 V)                    a3 = 0.01
              h = ((x_{t-1} * 36313) XOR (x_t * 27191)) mod trigram_buckets

A context that involves the stream start (history -1) has its own row: bigram row V,
trigram bucket `trigram_buckets`. A trigram context whose current token is BOS (a document
start) takes the stream-start bucket too, so no context reaches into the previous document
(the plugin is `document_aware`, which `golf audit` probes; `cross_documents = true` restores
the reference's hashing across the boundary). The adapter never sees val[0] (the first input is no
target), so in the tables the first target's context is "stream start" and the second's
trigram context is too; every later context is the real one.

Mixture: q(y) = sum_k pi_k p_k(y) with pi = softmax(w), computed for every y as a logsumexp
over the experts, so q is a normalized distribution (the core checks |logsumexp q| <= 1e-3 on
every batch). w starts at (neural_prior, 0, 0, 0). Hedge: after a chunk is scored and its
targets are known, w_k -= eta * (mean over the chunk's scored positions of -log p_k(y_t)).
Until `warmup_tokens` targets have been observed the neural distribution passes through
unchanged and w is not updated (the decision is taken per chunk, from the tables' state).
Targets reach an adapter once per chunk, so w moves once per chunk (the reference moved it
after every batch of 32 windows, ~16 times per 32,768-token chunk at stride 64, with the
same eta): at equal eta the weights here adapt more slowly; raise eta to compensate.

`entropy_feature` (off by default) lets the neural expert's weight depend on the neural
distribution's entropy H_t (nats): pi_t = softmax(w + beta * H_t * e_neural), so the model
can be trusted less where it is unsure. beta starts at 0 and is learned by online gradient
descent on the mixture's log-loss over each chunk (step `entropy_lr`), using
d(-log q_t(y))/d beta = -H_t * pi_t0 * (p_0(y)/q_t(y) - 1). pi_t is still a probability
vector, so q_t stays a normalized mixture: entropy only sets weights, never is an expert.

State flow (score-first): `adjust` only reads the tables and w, and records each scored
position's stream index, history and neural row; `observe` (targets now known) first
computes every expert's loss on those positions (the tables have not changed since
`adjust`), updates w (and beta), then adds the chunk's targets to the tables in stream
order, carrying the last two targets over as the next chunk's first contexts. Beside a
document adapter (golf.DocumentMode) the loop observes the scored prefix of the stream, which
lags behind what was scored: rows scored beyond it wait for the chunk that holds them (their
losses then read tables that grew meanwhile, from earlier stream tokens only).

Several ranks: each rank scores only its share of a chunk's positions, so the per-expert
loss sums and the position count are all-reduced before the update, and every rank
observes the whole chunk: tables and w stay identical on every rank.

Memory: unigram [V], bigram [V+1, V] and trigram [buckets+1, V] int32 counts on the model's
device (65,537 x 1,024 x 4 B = 268 MB at full scale; use fewer `trigram_buckets` for quick
runs), plus the neural rows of one chunk's scored positions (per rank) until it is observed.

Defects fixed against the reference:
- D1: its fifth "entropy expert" (e^{-H}, independent of y) made q sum to
  1 + pi_4 (V e^{-H} - 1) > 1, so its 1.0278 was not a code length. There are only
  normalized experts here.
- D8: it updated w on every position of each window, in-sample for context positions whose
  targets were already in the tables; here only on newly scored positions, each once.
- D9: its w was per rank; here the loss sums are all-reduced, so w is one.
- D10: its table update counted each chunk-boundary token twice (unigram and N) and dropped
  the trigram spanning the boundary; here each target is counted once, boundary n-grams included.
- D11: at window position 0 it used token 0 as the trigram context; here the real previous
  token from the stream history (a dedicated context only at the stream start).
- Its trigram denominator max(n(h, .), 1) + a3 V left unseen contexts unnormalized
  (sum 10.24 / 11.24); here an unseen context is exactly uniform.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

import golfcore as golf

EXPERTS = ("neural", "unigram", "bigram", "trigram")
HASH_A, HASH_B = 36313, 27191


@dataclass
class Config(golf.Section):
    eta: float = golf.option(0.1, "Hedge learning rate: w_k -= eta * mean loss_k over each scored chunk")
    neural_prior: float = golf.option(2.0, "initial log-weight of the neural expert (the n-gram experts start at 0)")
    warmup_tokens: int = golf.option(10000, "pass the neural distribution through until this many targets were observed")
    trigram_buckets: int = golf.option(65536, "hash buckets of the trigram context (table [buckets+1, V] int32)")
    unigram_alpha: float = golf.option(0.1, "add-alpha smoothing of the unigram expert")
    bigram_alpha: float = golf.option(0.1, "add-alpha smoothing of the bigram expert")
    trigram_alpha: float = golf.option(0.01, "add-alpha smoothing of the hashed-trigram expert")
    entropy_feature: bool = golf.option(False, "neural log-weight + beta * H_t (entropy of the neural distribution), beta learned")
    entropy_lr: float = golf.option(0.01, "online gradient step of beta (with entropy_feature)")
    cross_documents: bool = golf.option(False, "let a trigram context span a BOS, as the reference did (id 1 then is an ordinary token)")

    def check(self) -> None:
        if not self.eta >= 0:
            raise self.invalid("eta", f"{self.eta} must be >= 0")
        if not math.isfinite(self.neural_prior):
            raise self.invalid("neural_prior", f"{self.neural_prior} must be finite")
        if self.warmup_tokens < 0:
            raise self.invalid("warmup_tokens", f"{self.warmup_tokens} must be >= 0")
        if self.trigram_buckets < 1:
            raise self.invalid("trigram_buckets", f"{self.trigram_buckets} must be >= 1")
        for key in ("unigram_alpha", "bigram_alpha", "trigram_alpha"):
            if not getattr(self, key) > 0:
                raise self.invalid(key, f"{getattr(self, key)} must be > 0 (a zero count would get probability 0)")
        if not self.entropy_lr >= 0:
            raise self.invalid("entropy_lr", f"{self.entropy_lr} must be >= 0")


class HedgeMixer:
    """One evaluation's mixture state (fresh per evaluation)."""

    name = "hedge_mixer"
    history_len = 2
    order = 10  # after TTT (order 0): it mixes the adapted model's distribution
    ngram_channel = "token"  # its experts predict the next token from previous tokens

    def __init__(self, cfg: Config, bos_id: int = 1):
        self.cfg, self.bos_id = cfg, bos_id

    # ------------------------------------------------------------------ state

    def start(self, model, ctx: golf.EvalContext) -> None:
        self.ctx = ctx
        V, B, device = ctx.vocab_size, self.cfg.trigram_buckets, ctx.device
        self.V, self.device = V, device
        self.unigram = torch.zeros(V, dtype=torch.int32, device=device)
        self.bigram = torch.zeros(V + 1, V, dtype=torch.int32, device=device)  # row V: stream start
        self.bigram_total = torch.zeros(V + 1, dtype=torch.int64, device=device)
        self.trigram = torch.zeros(B + 1, V, dtype=torch.int32, device=device)  # bucket B: stream start
        self.trigram_total = torch.zeros(B + 1, dtype=torch.int64, device=device)
        self.observed = 0  # targets in the tables (N)
        self.context = torch.full((2,), -1, dtype=torch.long, device=device)  # last two observed targets
        self.w = torch.tensor([self.cfg.neural_prior, 0.0, 0.0, 0.0], dtype=torch.float64, device=device)
        self.beta = torch.zeros((), dtype=torch.float64, device=device)
        self.records: list[tuple[Tensor, Tensor, Tensor]] = []  # (positions, history, neural rows) scored, not yet observed
        self._unigram_lp: Tensor | None = None
        self.updates: list[dict] = []  # per updated chunk: mean losses, w and beta after the update

    @property
    def mixing(self) -> bool:
        return self.observed >= self.cfg.warmup_tokens

    def weights(self) -> Tensor:
        """pi = softmax(w) [4] (without the entropy feature's per-position term)."""
        return torch.softmax(self.w, 0)

    # ------------------------------------------------------------------ experts

    def _bucket(self, prev: Tensor, cur: Tensor) -> Tensor:
        h = ((prev * HASH_A) ^ (cur * HASH_B)) % self.cfg.trigram_buckets
        start = (prev < 0) | (cur < 0)
        if not self.cfg.cross_documents:  # a document start is a fresh context, like the stream start
            start = start | (cur == self.bos_id)
        return torch.where(start, self.cfg.trigram_buckets, h)

    def _bigram_row(self, cur: Tensor) -> Tensor:
        return torch.where(cur < 0, self.V, cur)

    def unigram_logprobs(self) -> Tensor:
        """[V] log p_1 (cached until the tables change)."""
        if self._unigram_lp is None:
            a = self.cfg.unigram_alpha
            self._unigram_lp = (self.unigram.float() + a).log() - math.log(self.observed + a * self.V)
        return self._unigram_lp

    def bigram_logprobs(self, history: Tensor) -> Tensor:
        """[N,V] log p_2 for histories [N,2]."""
        a, row = self.cfg.bigram_alpha, self._bigram_row(history[:, 1])
        return (self.bigram[row].float() + a).log() - (self.bigram_total[row].float() + a * self.V).log()[:, None]

    def trigram_logprobs(self, history: Tensor) -> Tensor:
        """[N,V] log p_3 for histories [N,2]."""
        a, h = self.cfg.trigram_alpha, self._bucket(history[:, 0], history[:, 1])
        return (self.trigram[h].float() + a).log() - (self.trigram_total[h].float() + a * self.V).log()[:, None]

    def experts(self, logprobs: Tensor, history: Tensor) -> list[Tensor]:
        """Each expert's [N,V] log-distribution at the given positions (neural, unigram, bigram, trigram)."""
        uni = self.unigram_logprobs().expand_as(logprobs)
        return [logprobs, uni, self.bigram_logprobs(history), self.trigram_logprobs(history)]

    def expert_target_logprobs(self, logprobs: Tensor, history: Tensor, targets: Tensor) -> Tensor:
        """[N,4] log p_k(y) of the given targets, without building [N,V] n-gram rows."""
        V = self.V
        a1, a2, a3 = self.cfg.unigram_alpha, self.cfg.bigram_alpha, self.cfg.trigram_alpha
        row, h = self._bigram_row(history[:, 1]), self._bucket(history[:, 0], history[:, 1])
        neural = logprobs.gather(1, targets[:, None]).squeeze(1).double()
        uni = (self.unigram[targets].double() + a1).log() - math.log(self.observed + a1 * V)
        bi = (self.bigram[row, targets].double() + a2).log() - (self.bigram_total[row].double() + a2 * V).log()
        tri = (self.trigram[h, targets].double() + a3).log() - (self.trigram_total[h].double() + a3 * V).log()
        return torch.stack([neural, uni, bi, tri], 1)

    def log_weights(self, logprobs: Tensor) -> Tensor:
        """[N,4] log pi_t: softmax(w), plus beta * H_t on the neural expert with the entropy feature."""
        w = self.w.expand(logprobs.size(0), -1)
        if self.cfg.entropy_feature:
            H = -(logprobs.double().exp() * logprobs.double()).sum(-1)  # [N] nats
            w = w.clone()
            w[:, 0] = w[:, 0] + self.beta * H
        return torch.log_softmax(w, -1)

    def mix(self, logprobs: Tensor, history: Tensor) -> Tensor:
        """log q(y) for every y: logsumexp_k (log pi_k + log p_k(y)), [N,V]."""
        log_pi = self.log_weights(logprobs).float()  # [N,4]
        out = None
        for k, lp in enumerate(self.experts(logprobs, history)):
            term = lp + log_pi[:, k : k + 1]
            out = term if out is None else torch.logaddexp(out, term)
        return out

    # ------------------------------------------------------------------ adapter protocol

    def adjust(self, logprobs: Tensor, history: Tensor, positions: Tensor) -> Tensor:
        if not self.mixing:
            return logprobs
        self.records.append((positions, history, logprobs))  # read-only until observe
        return self.mix(logprobs, history)

    def observe(self, tokens: Tensor) -> None:
        tokens = tokens.to(self.device).long()
        if self.mixing:
            self._hedge_update(tokens)
        self._count(tokens)

    def _hedge_update(self, tokens: Tensor) -> None:
        """w_k -= eta * mean loss_k over this chunk's scored positions (all ranks), before the tables
        change. Positions scored beyond the chunk (document mode: the eval loop hands over the scored
        prefix of the stream, which may lag behind what was scored) wait for a later chunk."""
        # loss sums [4], count, beta-gradient sum, scored positions before the chunk: one all-reduce, one read
        stats = torch.zeros(7, dtype=torch.float64, device=self.device)
        if self.records:
            pos = torch.cat([r[0] for r in self.records]).to(self.device)
            history = torch.cat([r[1] for r in self.records]).to(self.device)
            logprobs = torch.cat([r[2] for r in self.records]).to(self.device)
            offset = pos - self.observed
            later = offset >= tokens.numel()
            self.records = [(pos[later], history[later], logprobs[later])]
            pos, history, logprobs, offset = pos[~later], history[~later], logprobs[~later], offset[~later]
            stats[6] = (offset < 0).sum()
            lp = self.expert_target_logprobs(logprobs, history, tokens[offset.clamp(0, tokens.numel() - 1)])  # [n,4]
            stats[:4] = -lp.sum(0)
            stats[4] = pos.numel()
            if self.cfg.entropy_feature:
                log_pi = self.log_weights(logprobs)  # [n,4] float64
                log_q = torch.logsumexp(log_pi + lp, 1)
                H = -(logprobs.double().exp() * logprobs.double()).sum(-1)
                pi0 = log_pi[:, 0].exp()
                stats[5] = (-H * pi0 * ((lp[:, 0] - log_q).exp() - 1)).sum()
        self.ctx.all_reduce(stats)
        *_, count, _, outside = stats.tolist()
        if outside:  # every rank raises: the count was all-reduced
            raise golf.ComplianceError(
                f"{self.name}: {int(outside)} scored positions are not in the observed chunk "
                f"{self.observed}..{self.observed + tokens.numel() - 1} (C3/C4)"
            )
        if count == 0:
            return
        mean_loss = stats[:4] / count
        self.w -= self.cfg.eta * mean_loss
        if self.cfg.entropy_feature:
            self.beta -= self.cfg.entropy_lr * stats[5] / count
        logged = torch.cat([mean_loss, self.w, self.beta.view(1)]).tolist()  # one read
        self.updates.append({"positions": int(count), "mean_loss": logged[:4], "w": logged[4:8], "beta": logged[8]})

    def _count(self, tokens: Tensor) -> None:
        """Add the chunk's targets to the tables in stream order, each exactly once."""
        V = self.V
        stream = torch.cat([self.context, tokens])  # [M+2]; -1 where the stream had not started
        prev, cur = stream[:-2], stream[1:-1]  # the two tokens before each target
        ones = torch.ones(tokens.numel(), dtype=torch.int32, device=self.device)
        self.unigram.index_add_(0, tokens, ones)
        row = self._bigram_row(cur)
        self.bigram.view(-1).index_add_(0, row * V + tokens, ones)
        self.bigram_total.index_add_(0, row, ones.long())
        h = self._bucket(prev, cur)
        self.trigram.view(-1).index_add_(0, h * V + tokens, ones)
        self.trigram_total.index_add_(0, h, ones.long())
        self.observed += tokens.numel()
        self.context = stream[-2:].clone()
        self._unigram_lp = None


class HedgeMixerPlugin(golf.Plugin):
    name = "hedge_mixer"
    description = "online Hedge mixture of the model with unigram/bigram/hashed-trigram experts (PR #688; D1, D8-D11 fixed)"
    Config = Config
    closed_by_challenge = "hashed n-gram caches (PR #720, closed 27 March)"

    @property
    def document_aware(self) -> bool:
        return not self.config.cross_documents

    @golf.hookimpl
    def golf_eval_adapter(self, config):
        return HedgeMixer(self.config, config.tokens.bos_id)
