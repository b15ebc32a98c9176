"""The aggregator contract: plain values in, plain values out.

Aggregators are framework-free (no Flower, Ray or Hydra). They receive the
current global parameters, the validated :class:`ClientUpdate` values of one
round and a :class:`RoundInfo` that holds only what the server *observes*
(who was asked, who replied) -- never the simulation's hidden truth.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import numpy as np

Params = dict[str, np.ndarray]  # ordered: name -> array, as in a torch state_dict

BN_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def is_bn_buffer(name: str) -> bool:
    """True for BatchNorm running statistics and counters."""
    return name.rsplit(".", 1)[-1] in BN_BUFFER_SUFFIXES


def is_float(arr: np.ndarray) -> bool:
    return np.issubdtype(arr.dtype, np.floating)


def is_learnable(name: str, arr: np.ndarray) -> bool:
    """Float tensors that are not BatchNorm buffers (weights, biases, BN affine)."""
    return is_float(arr) and not is_bn_buffer(name)


@dataclass(frozen=True)
class ClientUpdate:
    """One client's validated reply for one round.

    ``client_id`` is the stable partition id (0..N-1), never Flower's node id.
    ``params`` is the client's full model state after local training.
    """

    client_id: int
    params: Params
    num_examples: int
    label_hist: np.ndarray | None = None
    train_loss: float | None = None
    train_accuracy: float | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RoundInfo:
    """What the server observes about a round."""

    round: int  # 1-based
    num_clients: int  # N, all clients of the federation
    asked: tuple[int, ...]  # client ids that were sent a message
    replied: tuple[int, ...]  # client ids whose update passed validation

    def participation(self) -> np.ndarray:
        """q_n^t for all N clients: 1 if the client's valid update arrived."""
        q = np.zeros(self.num_clients, dtype=bool)
        q[list(self.replied)] = True
        return q


@dataclass
class AggregatorContext:
    """What the host knows when it builds an aggregator.

    ``model_fn`` builds a fresh torch model (FedLAW's functional forward),
    ``init_params_fn(client_id)`` gives an independently initialised model
    (gossip), ``proxy_data`` is the server's proxy set (FedLAW), and
    ``oracle_participation_probs`` is the simulation truth that only the
    explicitly named oracle baseline (``known_prob``) may read.
    """

    num_clients: int
    num_classes: int
    seed: int = 0
    model_fn: Callable[[], Any] | None = None
    init_params_fn: Callable[[int], Params] | None = None
    proxy_data: tuple[np.ndarray, np.ndarray] | None = None
    oracle_participation_probs: np.ndarray | None = None


class Aggregator:
    """Base class. Subclasses implement :meth:`aggregate`.

    ``streaming = True`` marks rules that are weighted sums and could add each
    update into one accumulator as it arrives; rules that need the whole set
    (IDA, FedLAW, gossip) set it False.
    """

    name: str = "base"
    streaming: bool = False
    per_node_models: bool = False  # gossip: each client gets its own model

    def __init__(self, ctx: AggregatorContext, **options: Any) -> None:
        if options:
            raise TypeError(
                f"aggregator '{self.name}' got unknown option(s) {sorted(options)}"
            )
        self.ctx = ctx

    # -- the contract -------------------------------------------------------
    def aggregate(
        self, global_params: Params, updates: list[ClientUpdate], info: RoundInfo
    ) -> tuple[Params, dict[str, Any]]:
        raise NotImplementedError

    def params_for(self, client_id: int, global_params: Params) -> Params:
        """The model sent to ``client_id`` this round (gossip overrides)."""
        return global_params

    def client_config(self) -> dict[str, Any]:
        """Extra scalar config sent to clients (e.g. a FedProx mu)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None


# -- helpers shared by the weighted-sum rules --------------------------------
_CHUNK = 1 << 15  # elements per chunk: 256 KiB of float64 accumulator, fits in L2


def chunked(size: int, buffers: int) -> Iterator[tuple[slice, list[np.ndarray]]]:
    """Walk a flat array of ``size`` elements in cache-sized chunks: yields each
    chunk's slice and ``buffers`` float64 scratch views of its length. The
    scratch is reused across chunks, so it stays in cache and only the inputs
    are read from memory."""
    step = min(size, _CHUNK) or 1
    scratch = [np.empty(step, dtype=np.float64) for _ in range(buffers)]
    for s in range(0, size, step):
        e = min(size, s + step)
        yield slice(s, e), [b[: e - s] for b in scratch]


def weighted_sum(
    arrays: list[np.ndarray], weights: np.ndarray, center: np.ndarray | None = None,
    out_dtype: Any = np.float64,
) -> np.ndarray:
    """Σ_k w_k (a_k − center) (center optional), accumulated in float64.

    Computed in cache-sized chunks with in-place ufuncs: the same operations
    in the same order as the naive ``acc += w * (a.astype(f64) - center)``
    loop, bitwise, but only the inputs are read from memory -- the float64
    accumulator and temporary stay in cache, so the cost is one pass over the
    inputs (the memory-bandwidth bound)."""
    ref = arrays[0] if arrays else center
    shape = ref.shape
    size = int(np.prod(shape))
    flat = [(float(w), np.asarray(a).reshape(-1)) for w, a in zip(weights, arrays) if w != 0.0]
    cflat = None if center is None else np.asarray(center).reshape(-1)
    res = np.empty(size, dtype=out_dtype)
    for sl, (a, t) in chunked(size, 2):
        a.fill(0.0)
        for w, arr in flat:
            if cflat is None:
                np.multiply(arr[sl], w, out=t)
            else:
                np.subtract(arr[sl], cflat[sl], out=t, dtype=np.float64)
                np.multiply(t, w, out=t)
            np.add(a, t, out=a)
        res[sl] = a
    return res.reshape(shape)


def weighted_average(
    updates: list[ClientUpdate], weights: np.ndarray, template: Params
) -> Params:
    """Σ_k w_k θ_k on every float tensor; integer tensors are taken from the
    client with the largest weight (never averaged as floats)."""
    weights = np.asarray(weights, dtype=np.float64)
    out: Params = {}
    top = int(np.argmax(weights)) if len(weights) else 0
    for name, ref in template.items():
        if is_float(ref):
            if updates:
                out[name] = weighted_sum([u.params[name] for u in updates], weights, out_dtype=ref.dtype)
            else:
                out[name] = np.zeros_like(ref)
        else:
            out[name] = updates[top].params[name].copy() if updates else ref.copy()
    return out


def sorted_updates(updates: list[ClientUpdate]) -> list[ClientUpdate]:
    """Updates in client-id order, so sums do not depend on arrival order."""
    return sorted(updates, key=lambda u: u.client_id)


def weights_metrics(updates: list[ClientUpdate], weights: np.ndarray) -> dict[str, Any]:
    """Per-client weights as metrics, so a user can see why the model moved."""
    return {
        "weight_clients": [int(u.client_id) for u in updates],
        "weights": [float(w) for w in weights],
    }


# -- shared input checks (used by every aggregator module) ---
def check_updates(
    updates: list[ClientUpdate], template: Params, num_clients: int | None = None,
    finite: bool = True,
) -> None:
    """Raise ValueError naming the client if an update does not match the
    global model (names, shapes), holds non-finite floats, has an id out of
    range or appears twice. Aggregators must never turn bad input into NaN.
    ``finite=False`` skips the (full-pass) finiteness scan: use it when the
    output is checked instead and :func:`finite_or_blame` names the client."""
    seen: set[int] = set()
    for u in updates:
        cid = u.client_id
        if cid in seen:
            raise ValueError(f"client {cid}: sent two updates in the same round")
        seen.add(cid)
        if num_clients is not None and not 0 <= cid < num_clients:
            raise ValueError(f"client {cid}: id outside 0..{num_clients - 1}")
        if set(u.params) != set(template):
            missing = sorted(set(template) - set(u.params))
            extra = sorted(set(u.params) - set(template))
            raise ValueError(
                f"client {cid}: parameter names differ from the global model "
                f"(missing {missing}, unexpected {extra})"
            )
        for name, ref in template.items():
            a = np.asarray(u.params[name])
            if a.shape != ref.shape:
                raise ValueError(
                    f"client {cid}: '{name}' has shape {a.shape}, "
                    f"the global model has {ref.shape}"
                )
            if finite and is_float(ref) and not np.all(np.isfinite(a)):
                raise ValueError(f"client {cid}: '{name}' holds non-finite values")


def check_finite(params: Params, who: str) -> Params:
    """Refuse to hand back a model with NaN/inf (never silently)."""
    for name, a in params.items():
        if is_float(a) and not np.all(np.isfinite(a)):
            raise FloatingPointError(f"aggregator '{who}' produced non-finite values in '{name}'")
    return params


def finite_or_blame(out: Params, updates: list[ClientUpdate], template: Params, who: str) -> Params:
    """Check the aggregate; if it is not finite, find and name the client whose
    update was (a non-finite input always makes the weighted output non-finite,
    so scanning the output -- 1/M of the input bytes -- is enough)."""
    for a in out.values():
        if is_float(a) and not np.all(np.isfinite(a)):
            check_updates(updates, template)  # raises naming the client
            break
    return check_finite(out, who)


def check_info(info: RoundInfo, updates: list[ClientUpdate], num_clients: int) -> None:
    if info.num_clients != num_clients:
        raise ValueError(
            f"RoundInfo.num_clients={info.num_clients} but the aggregator was built "
            f"for {num_clients} clients"
        )
    got = sorted(u.client_id for u in updates)
    if got != sorted(info.replied):
        raise ValueError(
            f"updates come from clients {got} but RoundInfo.replied is {sorted(info.replied)}"
        )
