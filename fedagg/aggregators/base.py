"""The aggregator contract: plain values in, plain values out.

Aggregators are framework-free (no Flower, Ray or Hydra). Callers use one
entry point, :meth:`Aggregator.apply`, with the current global parameters,
the :class:`ClientUpdate` values of one round and a :class:`RoundInfo` that
holds only what the server *observes* (who was asked, who replied) -- never
the simulation's hidden truth. ``apply`` checks the input (client ids in
range and unique, the same parameter names and shapes as the global model,
finite values, label histograms, a consistent RoundInfo), then calls the
rule's own :meth:`Aggregator.aggregate`, then checks the output. A rule
therefore never sees bad input and can never hand back NaN; a subclass
implements ``aggregate`` only (overriding ``apply`` is refused).

A rule declares what it needs from the host with class attributes
(``needs_proxy``, ``needs_model_fn``, ``needs_init_params``,
``needs_oracle_probs``, ``needs_label_hist``); its :class:`AggregatorContext`
holds only what it declared -- everything else is ``None``. A rule whose
server step reads the clients' SGD (FedNova's normaliser) sets
``needs_sgd_clients``: the config then refuses ``train.optimizer=adam`` and a
FedProx term, in one line, before training. What a rule needs in every reply
beyond the contract (FedNova: the step count) it says in
:meth:`Aggregator.update_problem`, which ``apply`` and the Flower strategy
both run, so a reply that lacks it is refused with that one sentence.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from numpy.typing import DTypeLike

from ..errors import InvalidUpdate

if TYPE_CHECKING:  # typing only: aggregators stay importable without torch
    import torch

Params = dict[str, np.ndarray]  # ordered: name -> array, as in a torch state_dict
MetricValue = int | float | list[int] | list[float]
Metrics = dict[str, MetricValue]  # what a rule reports about a round (Flower MetricRecord values)
State = dict[str, object]  # a rule's state_dict (pickled into checkpoints)

BN_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def is_bn_buffer(name: str) -> bool:
    """True for BatchNorm running statistics and counters."""
    return name.rsplit(".", 1)[-1] in BN_BUFFER_SUFFIXES


def is_float(arr: np.ndarray) -> bool:
    return arr.dtype.kind == "f"  # np.issubdtype(arr.dtype, np.floating), without its cost per call


def is_learnable(name: str, arr: np.ndarray) -> bool:
    """Float tensors that are not BatchNorm buffers (weights, biases, BN affine)."""
    return is_float(arr) and not is_bn_buffer(name)


@dataclass(frozen=True)
class ClientUpdate:
    """One client's reply for one round.

    ``client_id`` is the stable partition id (0..N-1), never Flower's node id.
    ``params`` is the client's full model state after local training.
    """

    client_id: int
    params: Params
    num_examples: int
    label_hist: np.ndarray | None = None
    train_loss: float | None = None
    train_accuracy: float | None = None
    metadata: Mapping[str, int | float | str] = field(default_factory=dict)
    # what a rule with client-side terms needs back besides the model (SCAFFOLD: "dc.<name>" and "lr_steps");
    # the reply's "fedagg.rule-reply" ArrayRecord (fedagg.flower.client_state)
    extras: Params | None = None
    # True: fedagg's Flower boundary already held it to check_update's contract (parameter names, shapes and
    # finite values against the model it was sent, its counts and histogram), so Aggregator.apply does not pass
    # over its parameters a second time (its id, the rule's needs and the round are still checked there); a copy with
    # other parameters or counts must not keep it
    checked: bool = field(default=False, compare=False, repr=False)


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


ModelFn = Callable[[], "torch.nn.Module"]
InitParamsFn = Callable[[int], Params]


@dataclass(frozen=True)
class AggregatorContext:
    """What the host knows when it builds an aggregator.

    ``model_fn`` builds a fresh torch model (FedLAW's functional forward),
    ``init_params_fn(client_id)`` gives an independently initialised model
    (gossip), ``proxy_data`` is the server's proxy set (FedLAW), and
    ``oracle_participation_probs`` is the simulation truth that only the
    oracle baseline (``known_prob``) may read. An aggregator sees only the
    fields its class declares it needs (:meth:`restricted_to`).
    """

    num_clients: int
    num_classes: int
    seed: int = 0
    dataset: str = ""  # the dataset's name (FedLAW's official server lr depends on it)
    model_fn: ModelFn | None = None
    init_params_fn: InitParamsFn | None = None
    proxy_data: tuple[np.ndarray, np.ndarray] | None = None
    oracle_participation_probs: np.ndarray | None = None
    # the clients' SGD momentum (train.momentum; None: not known, e.g. a foreign ServerApp's clients)
    client_momentum: float | None = None

    def restricted_to(self, cls: type[Aggregator]) -> AggregatorContext:
        """This context with every field ``cls`` does not declare set to None."""
        return replace(
            self,
            model_fn=self.model_fn if cls.needs_model_fn else None,
            init_params_fn=self.init_params_fn if cls.needs_init_params else None,
            proxy_data=self.proxy_data if cls.needs_proxy else None,
            oracle_participation_probs=self.oracle_participation_probs if cls.needs_oracle_probs else None,
        )


class Aggregator:
    """Base class. Subclasses implement :meth:`aggregate`; callers call :meth:`apply`.

    ``per_node_models`` marks rules that keep one model per client (gossip:
    :meth:`params_for`).
    """

    name: ClassVar[str] = "base"
    per_node_models: ClassVar[bool] = False
    # what the rule needs from the host; the context carries only these
    needs_proxy: ClassVar[bool] = False  # ctx.proxy_data: the server's labelled proxy set
    needs_model_fn: ClassVar[bool] = False  # ctx.model_fn: a torch model factory
    needs_init_params: ClassVar[bool] = False  # ctx.init_params_fn: per-client initial models
    needs_oracle_probs: ClassVar[bool] = False  # ctx.oracle_participation_probs: simulation truth
    needs_label_hist: ClassVar[bool] = False  # every update must carry its label histogram
    # client-side terms (fedagg.task.correction): each client keeps a state between rounds (SCAFFOLD's c_i) ...
    client_state: ClassVar[bool] = False
    # ... and the term is fedagg's ClientApp's: any other ClientApp's replies are refused (update_problem)
    needs_fedagg_client: ClassVar[bool] = False
    needs_sgd_clients: ClassVar[bool] = False  # clients must train with train.optimizer=sgd, no FedProx term

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "apply" in cls.__dict__:
            raise TypeError(
                f"{cls.__qualname__} overrides Aggregator.apply; implement aggregate() instead "
                "(apply runs the input and output checks every rule relies on)"
            )

    def __init__(self, ctx: AggregatorContext, **options: object) -> None:
        if options:
            raise TypeError(
                f"aggregator '{self.name}' got unknown option(s) {sorted(options)}"
            )
        self.ctx = ctx.restricted_to(type(self))

    # -- the contract -------------------------------------------------------
    def apply(self, global_params: Params, updates: Sequence[ClientUpdate], info: RoundInfo) -> tuple[Params, Metrics]:
        """Check the input, run the rule, check the output. The only entry point."""
        check_updates(updates, global_params, self.ctx.num_clients, self.ctx.num_classes,
                      self.name if self.needs_label_hist else None)
        for u in updates:
            why = self.update_problem(u)
            if why:
                raise InvalidUpdate(f"client {u.client_id}: {why}")
        check_round(info, updates, self.ctx.num_clients)
        out, metrics = self.aggregate(global_params, list(updates), info)
        check_output(out, global_params, self.name)
        return {k: out[k] for k in global_params}, metrics

    def aggregate(
        self, global_params: Params, updates: list[ClientUpdate], info: RoundInfo
    ) -> tuple[Params, Metrics]:
        """The rule itself; its input has passed :meth:`apply`'s checks."""
        raise NotImplementedError

    def update_problem(self, u: ClientUpdate) -> str | None:
        """Why ``u`` lacks what this rule needs beyond the contract's checks
        (e.g. FedNova's step count), or None. Run by :meth:`apply` and, per
        reply, by the Flower strategy (the reply is rejected with this text)."""
        return None

    def params_for(self, client_id: int, global_params: Params) -> Params:
        """The model sent to ``client_id`` this round (gossip overrides)."""
        return global_params

    def client_config(self) -> dict[str, float]:
        """Extra training options sent to clients (e.g. a FedProx ``proximal_mu``)."""
        return {}

    def client_terms(self) -> dict[str, str | float]:
        """The client-side term fedagg's ClientApp applies in local training, as the
        instruction carries it (``{"rule": "scaffold", "beta": 0.9}``); {}: none."""
        return {}

    def server_arrays(self, global_params: Params) -> Params:
        """Arrays every asked client receives with the model this round (SCAFFOLD's
        control variate ``c.<name>``, the momentum ``g.<name>``); {}: none."""
        return {}


    def state_dict(self) -> State:
        return {}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
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
    out_dtype: DTypeLike = np.float64,
) -> np.ndarray:
    """Σ_k w_k (a_k − center) (center optional), accumulated in float64.

    Computed in cache-sized chunks with in-place ufuncs: the same operations
    in the same order as the naive ``acc += w * (a.astype(f64) - center)``
    loop, bitwise, but only the inputs are read from memory -- the float64
    accumulator and temporary stay in cache, so the cost is one pass over the
    inputs (the memory-bandwidth bound)."""
    ref = arrays[0] if arrays else center
    if ref is None:
        raise ValueError("weighted_sum needs at least one array or a center")
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


def weights_metrics(updates: list[ClientUpdate], weights: np.ndarray) -> Metrics:
    """Per-client weights as metrics, so a user can see why the model moved."""
    return {
        "weight_clients": [int(u.client_id) for u in updates],
        "weights": [float(w) for w in weights],
    }


# -- the checks apply() runs (once, for every rule) ---------------------------
def _all_finite(a: np.ndarray) -> bool:
    """True if every element is finite: a float64 sum first (no temporary the
    size of ``a``); only an overflowing sum needs the element-wise test."""
    if np.isfinite(a.sum(dtype=np.float64)):
        return True
    return bool(np.all(np.isfinite(a)))


def check_round(info: RoundInfo, updates: Sequence[ClientUpdate], num_clients: int) -> None:
    """RoundInfo agrees with the aggregator and the updates."""
    if info.num_clients != num_clients:
        raise InvalidUpdate(
            f"RoundInfo.num_clients={info.num_clients} but the aggregator was built for {num_clients} clients"
        )
    for what, ids in (("asked", info.asked), ("replied", info.replied)):
        bad = [c for c in ids if not 0 <= int(c) < num_clients]
        if bad:
            raise InvalidUpdate(f"RoundInfo.{what} holds client id(s) {bad[:5]} outside 0..{num_clients - 1}")
        if len(set(ids)) != len(ids):
            raise InvalidUpdate(f"RoundInfo.{what} lists a client twice: {sorted(ids)}")
    not_asked = sorted(set(info.replied) - set(info.asked))
    if not_asked:
        raise InvalidUpdate(f"RoundInfo.replied holds client(s) {not_asked[:5]} that were not asked")
    got = sorted(u.client_id for u in updates)
    if got != sorted(info.replied):
        raise InvalidUpdate(f"updates come from clients {got} but RoundInfo.replied is {sorted(info.replied)}")


def check_updates(
    updates: Sequence[ClientUpdate], template: Params, num_clients: int, num_classes: int,
    needs_hist: str | None = None,
) -> None:
    """Raise InvalidUpdate naming the client if an update has an id out of
    range or twice, or fails :func:`check_update`."""
    seen: set[int] = set()
    for u in updates:
        cid = u.client_id
        if isinstance(cid, bool) or not isinstance(cid, (int, np.integer)):
            raise InvalidUpdate(f"client id {cid!r} is not an integer")
        if not 0 <= cid < num_clients:
            raise InvalidUpdate(f"client {cid}: id outside 0..{num_clients - 1}")
        if cid in seen:
            raise InvalidUpdate(f"client {cid}: sent two updates in the same round")
        seen.add(cid)
        if u.checked:  # held to the same contract at the boundary (ClientUpdate.checked)
            continue
        try:
            check_update(u, template, num_classes, needs_hist)
        except InvalidUpdate as e:
            raise InvalidUpdate(f"client {cid}: {e}") from None


# One refusal per fact: the texts below are the only place each is written (the Flower boundary, which
# validates a whole chunk of stacked replies at once, uses them too).
def names_problem(got: Sequence[str], template: Params) -> str | None:
    """Why parameter names ``got`` are not the global model's, or None."""
    if list(got) == list(template) or set(got) == set(template):
        return None
    missing = sorted(set(template) - set(got))
    extra = sorted(set(got) - set(template))
    return f"parameter names differ from the global model (missing {missing[:5]}, unexpected {extra[:5]})"


def shape_problem(name: str, shape: tuple[int, ...], ref: tuple[int, ...]) -> str:
    return f"'{name}' has shape {shape}, the global model has {ref}"


def nonfinite_problem(name: str) -> str:
    return f"'{name}' holds non-finite values (NaN or Inf)"


def count_problem(n: object) -> str | None:
    """Why ``n`` is not a valid example count, or None."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        return f"num_examples={n!r} is not a positive integer (a reply's 'num-examples')"
    return None


_NUMBER_KINDS = "iufcm"  # the dtype kinds np.issubdtype(dtype, np.number) accepts (timedelta64 is an integer)


def label_hist_problem(h: np.ndarray, num_classes: int) -> str | None:
    """Why ``h`` is not a label histogram over ``num_classes`` classes, or None."""
    if h.shape != (num_classes,):
        return f"label_hist has shape {h.shape}, expected ({num_classes},): one count per class"
    kind = h.dtype.kind
    if kind not in _NUMBER_KINDS or (kind in "fc" and not np.isfinite(h).all()) or (h < 0).any():
        return "label_hist has negative or non-finite counts"
    if h.sum() <= 0:
        return "label_hist is all zero"
    return None


def missing_hist_problem(rule: str) -> str:
    return (f"aggregator '{rule}' needs each client's label_hist (a ClientApp sends it as 'label-hist', "
            "a list of per-class counts, in the reply's metrics); none was sent")


def check_update(u: ClientUpdate, template: Params, num_classes: int, needs_hist: str | None = None,
                 *, params_checked: bool = False) -> None:
    """Raise InvalidUpdate if ``u``'s parameter names or shapes differ from the
    global model's, a float tensor holds non-finite values, its example count
    is not positive, or its label histogram is malformed (or missing, when
    ``needs_hist`` names a rule that needs one). ``params_checked``: the
    parameters were already checked (a stacked chunk, at once)."""
    if not params_checked:
        why = names_problem(list(u.params), template)
        if why:
            raise InvalidUpdate(why)
        for name, ref in template.items():
            a = np.asarray(u.params[name])
            if a.shape != ref.shape:
                raise InvalidUpdate(shape_problem(name, a.shape, ref.shape))
            if is_float(a) and not _all_finite(a):
                raise InvalidUpdate(nonfinite_problem(name))
    why = count_problem(u.num_examples)
    if why:
        raise InvalidUpdate(why)
    if u.label_hist is None:
        if needs_hist:
            raise InvalidUpdate(missing_hist_problem(needs_hist))
        return
    why = label_hist_problem(np.asarray(u.label_hist), num_classes)
    if why:
        raise InvalidUpdate(why)


def check_output(out: Params, template: Params, who: str) -> None:
    """The rule handed back a model like the global one, with finite values."""
    if set(out) != set(template):
        raise InvalidUpdate(
            f"aggregator '{who}' returned parameters {list(out)[:5]}..., the global model has {list(template)[:5]}..."
        )
    for name, a in out.items():
        if np.shape(a) != template[name].shape:
            raise InvalidUpdate(f"aggregator '{who}' returned '{name}' with shape {np.shape(a)}, expected {template[name].shape}")
        if is_float(np.asarray(a)) and not _all_finite(np.asarray(a)):
            raise FloatingPointError(f"aggregator '{who}' produced non-finite values in '{name}'")
