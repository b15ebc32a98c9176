"""How a simulation grid cuts a round into cohort chunks: by planned step count,
then client id, ``runtime.cohort_chunk`` at a time; faulty and foreign messages
keep their place in the plan."""
from __future__ import annotations

from fedagg_testing import compose
from flwr.app import Message, MessageType, RecordDict

from fedagg.experiment import build
from fedagg.flower.instruction import SimPlan
from fedagg.runtime.inprocess import set_task_identity
from fedagg.runtime.vectorised import plan_chunks, planned_work
from fedagg.task.cohort import planned_steps

BASE = 1000
set_task_identity()  # Flower's Message needs a run id, as in every simulation grid


def _round(exp, plans: dict[int, SimPlan]) -> list[Message]:
    msgs = []
    for cid in range(exp.cfg.num_clients):
        config = exp.instruction.for_client(1, plans.get(cid, SimPlan())).encode()
        msgs.append(Message(RecordDict({"config": config}), dst_node_id=BASE + cid, message_type=MessageType.TRAIN))
    return msgs


def test_chunks_group_clients_of_similar_work_in_a_fixed_order():
    exp = build(compose("dataset=digits", "num_clients=12", "partition=dirichlet", "partition.alpha=0.3",
                        "train.epochs=1", "train.batch_size=8", "seed=5"))
    plans = {0: SimPlan(epochs=3), 1: SimPlan(work_fraction=0.25), 2: SimPlan(fault="crash")}
    msgs = _round(exp, plans)
    node_config = lambda nid: {"partition-id": nid - BASE}  # noqa: E731
    chunks, rest = plan_chunks(msgs, node_config, 5)
    assert rest == [] and [len(c) for c in chunks] == [5, 5, 2]
    order = [m.metadata.dst_node_id - BASE for c in chunks for m in c]

    def steps(cid: int) -> int:
        p = plans.get(cid, SimPlan())
        if p.fault:
            return 0
        return planned_steps(exp.fd.train_size(cid), epochs=p.epochs or 1, steps=0, batch_size=8,
                             work_fraction=p.work_fraction)

    assert [planned_work(msgs[c], c) for c in range(12)] == [steps(c) for c in range(12)]
    assert order == sorted(range(12), key=lambda c: (steps(c), c))
    assert order != list(range(12))  # unequal shards: not plain client-id order
    assert order[0] == 2  # the crashing client does no work
    # the same plan for any message order (workers and scheduling never change a chunk)
    again, _ = plan_chunks(msgs[::-1], node_config, 5)
    assert [[m.metadata.dst_node_id for m in c] for c in again] == [[m.metadata.dst_node_id for m in c] for c in chunks]


def test_messages_without_a_readable_instruction_stay_out_of_chunks():
    exp = build(compose("dataset=digits", "num_clients=4", "train.epochs=1"))
    msgs = _round(exp, {})
    bad = Message(RecordDict({}), dst_node_id=BASE + 3, message_type=MessageType.TRAIN)
    chunks, rest = plan_chunks([*msgs[:3], bad], lambda nid: {"partition-id": nid - BASE}, 10)
    assert rest == [bad] and sorted(m.metadata.dst_node_id for m in chunks[0]) == [BASE, BASE + 1, BASE + 2]


def test_chunks_trained_one_by_one_carry_equal_work_and_go_to_the_least_loaded_worker():
    from fedagg.runtime.vectorised import _plan, assign_chunks

    exp = build(compose("dataset=digits", "num_clients=20", "partition=dirichlet", "partition.alpha=0.3",
                        "train.epochs=1", "train.batch_size=8", "seed=5"))
    msgs = _round(exp, {})
    node_config = lambda nid: {"partition-id": nid - BASE}  # noqa: E731
    stacked, w_stacked, _ = _plan(msgs, node_config, 10, True)
    dealt, w_dealt, _ = _plan(msgs, node_config, 10, False)
    order = [m.metadata.dst_node_id for c in stacked for m in c]
    assert [m.metadata.dst_node_id for m in dealt[0]] == order[0::2]  # the same order, dealt over 2 chunks
    assert sum(w_stacked) == sum(w_dealt) == sum(planned_work(m, m.metadata.dst_node_id - BASE) for m in msgs)
    assert max(w_dealt) - min(w_dealt) < max(w_stacked) - min(w_stacked)  # about equal work
    # a small round trained one by one still reaches every worker: a chunk each (its clients' numbers never
    # depend on their chunk); stacked chunks keep their composition whatever the workers
    few = msgs[:6]
    assert len(_plan(few, node_config, 10, False)[0]) == 1
    two, w_two, _ = _plan(few, node_config, 10, False, workers=2)
    assert len(two) == 2 and sorted(m.metadata.dst_node_id for c in two for m in c) == \
        sorted(m.metadata.dst_node_id for m in few) and max(w_two) - min(w_two) <= max(w_two) // 2 + 1
    assert len(_plan(msgs[:1], node_config, 10, False, workers=2)[0]) == 1  # one client: one chunk
    assert _plan(few, node_config, 10, True, workers=2)[0] == _plan(few, node_config, 10, True)[0]
    # the most work first, each to the least loaded worker (ties: the lower index)
    assert assign_chunks([5, 9, 1, 4], 2) == [1, 0, 0, 1] and assign_chunks([3, 3, 3], 2) == [0, 1, 0]
