"""Variance-corrected gossip averaging (Tian et al., arXiv 2404.04616),
docs/algorithms.md §7, as a synchronous round-based simulation.

Every node n keeps its own model θ_n (``per_node_models = True``;
``params_for(n, ·)`` returns θ_n). Nodes start from independent inits
``ctx.init_params_fn(n)`` (``independent_init=True``, the paper's premise)
or all from the global model (``False``).

One round, synchronous (every node reads the models of the same moment):

1. the nodes that replied trained: θ_n ← their update; the others keep θ_n;
2. node n receives the *trained* models of its neighbours that replied
   (R_n, M = |R_n|). If M = 0 it keeps θ_n. Otherwise it averages
   (``mix='average_100'``: Ŵ = mean of R_n; ``'half_self'``: Ŵ = ½θ_n + ½
   mean of R_n, i.e. DFL2's train_50_average_50);
3. variance correction (``variance_correction=True``), per corrected tensor:
   σ*² = mean over R_n of the population variance of that tensor (own model
   never included, even with half_self, as in DFL2); μ, s = mean, population
   std of Ŵ; Ŵ ← μ + (Ŵ − μ)·σ*/s. The tensor is skipped if s ≤ ``eps``
   (default 0: only constant tensors, where DFL2 would divide by zero).

Which tensors are corrected: ``correct='weights'`` (default, DFL2 / paper
era: learnable tensors with ndim ≥ 2, i.e. conv/linear kernels; biases
averaged but not rescaled) or ``'all_float'`` (DFL_torch: every learnable
float tensor with more than one element). BN running statistics are averaged
with the same mix but never rescaled (a choice: DFL2's LeNet has no BN);
integer tensors are never averaged (each node keeps its own).

Topology (seeded by ``rng(ctx.seed, "topology")``): ``ring``,
``k_regular`` (``degree``), ``erdos_renyi`` (``p``), ``complete``. A topology
that leaves a node without neighbours is refused (ValueError).

Returned "global": the element-wise mean of all node models (integer tensors
from node 0). Metrics: ``consensus_distance`` = mean over nodes of
‖θ_n − θ̄‖₂ (learnable float tensors); ``layer_variance`` = mean over weight
tensors (learnable, ndim ≥ 2) of the population variance of θ̄'s tensor --
it shrinks towards 0 when uncorrelated models are averaged without the
correction (the "vanishing variance"); ``node_layer_variance`` = the same
statistic averaged over the node models; ``num_averaged`` = nodes that
averaged this round.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..seeding import rng
from .base import (
    Aggregator,
    AggregatorContext,
    Metrics,
    Params,
    State,
    is_float,
    is_learnable,
    sorted_updates,
)
from .registry import register

TOPOLOGIES = ("ring", "k_regular", "erdos_renyi", "complete")


def build_topology(
    n: int, topology: str, seed: int, degree: int = 4, p: float = 0.3
) -> list[list[int]]:
    """Neighbour lists (sorted) of an undirected graph on nodes 0..n-1."""
    import networkx as nx  # here, not at module level: every ClientApp process imports this package

    if n < 2:
        raise ValueError(f"num_clients={n}: gossip needs at least 2 nodes (each averages with its neighbours); "
                         "set num_clients=2 or more")
    g = rng(seed, "topology")
    if topology == "ring":
        G = nx.cycle_graph(n) if n >= 3 else nx.path_graph(n)
    elif topology == "complete":
        G = nx.complete_graph(n)
    elif topology == "k_regular":
        if not 0 < degree < n or (n * degree) % 2:
            raise ValueError(
                f"aggregator.degree={degree}: a {degree}-regular graph on {n} nodes "
                "needs 0 < degree < n and n·degree even"
            )
        G = nx.random_regular_graph(int(degree), n, seed=int(g.integers(2**31 - 1)))
    elif topology == "erdos_renyi":
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"aggregator.p={p} must be in [0, 1]")
        draws = g.random((n, n))
        upper = np.triu(draws < p, k=1)
        G = nx.Graph()
        G.add_nodes_from(range(n))
        G.add_edges_from(zip(*np.nonzero(upper)))
    else:
        raise ValueError(f"aggregator.topology='{topology}' is not one of {', '.join(TOPOLOGIES)}")
    nbrs = [sorted(int(j) for j in G.neighbors(i) if j != i) for i in range(n)]
    lonely = [i for i, nb in enumerate(nbrs) if not nb]
    if lonely:
        fix = "raise aggregator.p/aggregator.degree or change aggregator.topology"
        if topology == "erdos_renyi" and n > 1:
            # node i gets a neighbour iff p exceeds its smallest edge draw; the same draws serve every p
            sym = np.triu(draws, k=1)
            sym = sym + sym.T
            np.fill_diagonal(sym, np.inf)
            need = float(sym.min(axis=1).max())
            fix = f"aggregator.p={min(1.0, np.floor(need * 100) / 100 + 0.01):g} or more connects every node (seed {seed})"
        where = f"aggregator.topology={topology}" + (f" with aggregator.p={p}" if topology == "erdos_renyi" else "")
        raise ValueError(f"{where} on {n} nodes leaves node(s) {lonely[:10]} without neighbours; "
                         f"gossip needs every node connected: {fix}")
    return nbrs


def variance_correct(avg: np.ndarray, target_var: float, eps: float = 0.0) -> np.ndarray:
    """Rescale ``avg`` around its own mean so its population variance equals
    ``target_var``; unchanged if its std ≤ eps."""
    a = avg.astype(np.float64)
    mu, s = a.mean(), a.std()
    if s <= eps:
        return avg
    return (mu + (a - mu) * (np.sqrt(target_var) / s)).astype(avg.dtype)


@register("gossip")
class Gossip(Aggregator):
    per_node_models = True
    needs_init_params = True  # independent_init: each node starts from its own init

    def __init__(
        self,
        ctx: AggregatorContext,
        topology: str = "ring",
        degree: int = 4,
        p: float = 0.3,
        mix: str = "average_100",
        variance_correction: bool = True,
        correct: str = "weights",
        eps: float = 0.0,
        independent_init: bool = True,
        **kw: object,
    ) -> None:
        super().__init__(ctx, **kw)
        if mix not in ("average_100", "half_self"):
            raise ValueError(f"aggregator.mix='{mix}' is not one of average_100, half_self")
        if correct not in ("weights", "all_float"):
            raise ValueError(f"aggregator.correct='{correct}' is not one of weights, all_float")
        if eps < 0:
            raise ValueError(f"aggregator.eps={eps} must be >= 0")
        if independent_init and self.ctx.init_params_fn is None:
            raise ValueError(
                "gossip with independent_init=true needs ctx.init_params_fn, each node's initial model "
                "(pass init_params_fn= to strategy_for, or independent_init=False to start every node "
                "from the global model)"
            )
        self.n = int(ctx.num_clients)
        self.topology = topology
        self.neighbours = build_topology(self.n, topology, ctx.seed, degree, p)
        self.mix, self.variance_correction, self.correct = mix, bool(variance_correction), correct
        self.eps, self.independent_init = float(eps), bool(independent_init)
        self.nodes: dict[int, Params] = {}

    # -- node models ------------------------------------------------------------
    def _node(self, cid: int, global_params: Params) -> Params:
        if cid not in self.nodes:
            init = self.ctx.init_params_fn
            src = init(cid) if self.independent_init and init is not None else global_params
            self.nodes[cid] = {k: np.array(v, copy=True) for k, v in src.items()}
        return self.nodes[cid]

    def params_for(self, client_id: int, global_params: Params) -> Params:
        return self._node(int(client_id), global_params)

    def corrected(self, name: str, ref: np.ndarray) -> bool:
        if not is_learnable(name, ref):
            return False
        return ref.ndim >= 2 if self.correct == "weights" else ref.size > 1

    # -- one round --------------------------------------------------------------
    def aggregate(self, global_params, updates, info):
        updates = sorted_updates(updates)
        for c in range(self.n):
            self._node(c, global_params)
        current = dict(self.nodes)  # θ_n after local training (snapshot)
        for u in updates:
            current[u.client_id] = {k: np.array(v, copy=True) for k, v in u.params.items()}
        replied = set(info.replied)
        new: dict[int, Params] = {}
        factors: list[float] = []
        averaged = 0
        for i in range(self.n):
            recv = [current[j] for j in self.neighbours[i] if j in replied]
            own = current[i]
            if not recv:
                new[i] = own
                continue
            averaged += 1
            out: Params = {}
            for name, ref in own.items():
                if not is_float(ref):
                    out[name] = ref  # integer tensors: the node's own
                    continue
                avg = np.mean([r[name].astype(np.float64) for r in recv], axis=0)
                if self.mix == "half_self":
                    avg = 0.5 * own[name].astype(np.float64) + 0.5 * avg
                if self.variance_correction and self.corrected(name, ref):
                    target = float(np.mean([np.var(r[name].astype(np.float64)) for r in recv]))
                    s = avg.std()
                    if s > self.eps:
                        factors.append(float(np.sqrt(target) / s))
                    avg = variance_correct(avg, target, self.eps)
                out[name] = avg.astype(ref.dtype)
            new[i] = out
        self.nodes = new
        mean = self._mean_model()
        return mean, self._metrics(mean, factors, averaged)

    def _mean_model(self) -> Params:
        out: Params = {}
        for name, ref in self.nodes[0].items():
            if is_float(ref):
                out[name] = np.mean(
                    [self.nodes[i][name].astype(np.float64) for i in range(self.n)], axis=0
                ).astype(ref.dtype)
            else:
                out[name] = np.array(ref, copy=True)
        return out

    def _metrics(self, mean: Params, factors: list[float], averaged: int) -> Metrics:
        learn = [k for k, v in mean.items() if is_learnable(k, v)]
        weights = [k for k in learn if mean[k].ndim >= 2]
        dist = []
        for i in range(self.n):
            sq = sum(
                float(np.sum((self.nodes[i][k].astype(np.float64) - mean[k].astype(np.float64)) ** 2))
                for k in learn
            )
            dist.append(np.sqrt(sq))
        m: Metrics = {"consensus_distance": float(np.mean(dist)), "num_averaged": averaged}
        if weights:
            m["layer_variance"] = float(np.mean([np.var(mean[k].astype(np.float64)) for k in weights]))
            m["node_layer_variance"] = float(
                np.mean([np.var(self.nodes[i][k].astype(np.float64)) for i in range(self.n) for k in weights])
            )
        m["vc_factor_mean"] = float(np.mean(factors)) if factors else 1.0
        return m

    # -- persistence ------------------------------------------------------------
    def state_dict(self) -> State:
        return {
            "neighbours": [list(nb) for nb in self.neighbours],
            "nodes": {int(c): {k: v.copy() for k, v in p.items()} for c, p in self.nodes.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        nb = [list(map(int, x)) for x in state.get("neighbours", self.neighbours)]
        if nb != self.neighbours:
            raise ValueError("gossip state was saved with a different topology")
        self.nodes = {int(c): {k: np.array(v) for k, v in p.items()} for c, p in state["nodes"].items()}
