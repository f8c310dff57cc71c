"""Token-to-expert predictors: which experts each token of the batch at hand will pick (MoE-GPS's second strategy).

Where a load predictor (:mod:`models.base`) forecasts the distribution over experts from past records, these
predict, token by token, the router's top-k choice per MoE layer; counting the predictions gives the batch's
load. They learn online from the token-level sample of an inference trace (earlier sampled passes only) and
are scored by :mod:`bench.gps`. Arrays: ``tokens[N]`` and ``prev[N]`` (token ids), ``experts[N, L, k]``.

* :class:`FrequencyTable` -- the experts each token id (or token id and previous token) went to most often;
* :class:`LayerTransition` -- the experts of layer l most often chosen by tokens that chose the given experts at
  layer l-1 (a table ``[L, E, E]``); it needs the token's real routing at the layer before, so it runs between
  layers, and layer 0 falls back to the frequency table;
* the pre-gate (a learned gate on an earlier layer's hidden state) needs the model's internals and runs in the
  serving loop (``datasets_registry.tracer.serve.PreGate``); the trace records its predictions.
"""

from __future__ import annotations

import numpy as np


class ContextCounts:
    """Expert counts ``[L, E]`` per context (a token id, or a pair of them), a row for each context seen so far:
    memory grows with the contexts met, not with the vocabulary (byte-level for the tracer's models, 100,000+ ids
    for imported traces)."""

    def __init__(self, layers: int, experts: int):
        self.row_of: dict[int, int] = {}
        self.table = np.zeros((16, layers, experts), dtype=np.int64)  # row 0: every unseen context, all zeros

    def rows(self, keys: np.ndarray, add: bool = False) -> np.ndarray:
        """The row of each key (0 for an unseen key, unless `add`, which gives it a new row)."""
        uniq, inverse = np.unique(keys, return_inverse=True)
        if add:
            for key in uniq.tolist():
                if key not in self.row_of:
                    self.row_of[key] = len(self.row_of) + 1
            if len(self.row_of) >= self.table.shape[0]:
                grown = np.zeros((2 * len(self.row_of), *self.table.shape[1:]), dtype=np.int64)
                grown[: self.table.shape[0]] = self.table
                self.table = grown
        return np.array([self.row_of.get(key, 0) for key in uniq.tolist()], dtype=np.int64)[inverse.ravel()]

    def add(self, keys: np.ndarray, layer: np.ndarray, experts: np.ndarray) -> None:
        rows = self.rows(keys, add=True)  # first: it may grow the table
        np.add.at(self.table, (rows, layer, experts), 1)

    def __getitem__(self, keys: np.ndarray) -> np.ndarray:
        return self.table[self.rows(keys)]


def pair_keys(prev: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """One number per (previous token, token) pair."""
    return (prev.astype(np.int64) << 32) | tokens.astype(np.int64)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """The k highest-scoring ids along the last axis (ties: the lowest id), ``[..., E]`` -> ``[..., k]``."""
    order = np.argsort(-scores, axis=-1, kind="stable")
    return order[..., :k]


class TokenExpertPredictor:
    """Base: ``update`` with a sampled pass's tokens and their routing, ``predict`` a new pass's routing."""

    name = "token-expert"

    def __init__(self, layers: int, experts: int, k: int):
        self.layers, self.experts, self.k = layers, experts, k

    def update(self, tokens: np.ndarray, prev: np.ndarray, experts: np.ndarray) -> None:
        raise NotImplementedError

    def predict(self, tokens: np.ndarray, prev: np.ndarray, experts: np.ndarray | None = None) -> np.ndarray:
        """``[N, L, k]`` expert ids. `experts` (the real routing) is given to predictors that read an earlier layer's
        routing (:class:`LayerTransition`); the others never see it."""
        raise NotImplementedError


class FrequencyTable(TokenExpertPredictor):
    """Per layer, the experts a token id (``context="token"``) or a (previous token, token) pair
    (``context="bigram"``) went to most often so far; unseen contexts fall back to the token, then to all tokens."""

    def __init__(self, layers: int, experts: int, k: int, context: str = "token"):
        super().__init__(layers, experts, k)
        if context not in ("token", "bigram"):
            raise ValueError("context is token or bigram")
        self.context = context
        self.name = "freq-bigram" if context == "bigram" else "freq-token"
        self.by_token = ContextCounts(layers, experts)
        self.by_pair = ContextCounts(layers, experts) if context == "bigram" else None
        self.overall = np.zeros((layers, experts), dtype=np.int64)

    def update(self, tokens, prev, experts):
        N, L, k = experts.shape
        layer = np.tile(np.repeat(np.arange(L), k), N)
        self.by_token.add(np.repeat(tokens.astype(np.int64), L * k), layer, experts.ravel())
        np.add.at(self.overall, (layer, experts.ravel()), 1)
        if self.by_pair is not None:
            self.by_pair.add(np.repeat(pair_keys(prev, tokens), L * k), layer, experts.ravel())

    def predict(self, tokens, prev, experts=None):
        tokens = tokens.astype(np.int64)
        # scores: the context's counts, ties broken by the token's and then the overall counts (scaled below 1)
        scores = self.by_token[tokens] + self.overall[None] / (self.overall.sum(axis=-1, keepdims=True)[None] + 1.0)
        if self.by_pair is not None:
            scores = self.by_pair[pair_keys(prev, tokens)] * (1.0 + scores.max()) + scores
        return top_k(scores, self.k)


class LayerTransition(TokenExpertPredictor):
    """Layer l's experts from the token's real experts at layer l-1, by a transition table ``[L, E, E]``
    (Pre-gated MoE's and ExFlow's observation that routing is correlated across layers); layer 0 is predicted by
    a :class:`FrequencyTable` of token ids."""

    name = "layer-transition"

    def __init__(self, layers: int, experts: int, k: int):
        super().__init__(layers, experts, k)
        self.first = FrequencyTable(layers, experts, k)
        self.table = np.zeros((layers, experts, experts), dtype=np.int64)

    def update(self, tokens, prev, experts):
        self.first.update(tokens, prev, experts)
        N, L, k = experts.shape
        for layer in range(1, L):
            src = np.repeat(experts[:, layer - 1, :], k, axis=1).ravel()  # each (from, to) pair of the token
            dst = np.tile(experts[:, layer, :], (1, k)).ravel()
            np.add.at(self.table[layer], (src, dst), 1)

    def predict(self, tokens, prev, experts=None):
        if experts is None:
            raise ValueError("layer-transition reads the real routing of the layer before")
        out = self.first.predict(tokens, prev)
        for layer in range(1, self.layers):
            scores = self.table[layer][experts[:, layer - 1, :]].sum(axis=1)  # [N, E]
            out[:, layer, :] = top_k(scores + self.first.overall[layer] * 1e-9, self.k)
        return out

