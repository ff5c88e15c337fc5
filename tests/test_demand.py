"""Requests to the autoscaler under v2, against a simulated v2 that meets a request only where its
node types can hold all of it (as v2 does: an infeasible constraint launches nothing)."""

import pytest

from vgray.clusters import demand as demand_module
from vgray.clusters.autoscale import Capacity, NodeType
from vgray.clusters.demand import Demand, plan_gpu
from vgray.errors import VgrayError


class FakeV2:
    """Holds `cpus` CPUs for shard work at most, and a GPU if `gpu`."""

    def __init__(self, cpus, gpu):
        self.cpus, self.gpu = cpus, gpu
        self.constraint = []
        self.looks = 0

    def request(self, wanted, v2):
        assert v2
        self.constraint = list(wanted)

    def verdict(self):
        self.looks += 1
        gpus = sum(b.get("GPU", 0) for b in self.constraint)
        cpus = sum(1 for b in self.constraint if "GPU" not in b)
        return cpus <= self.cpus and (gpus == 0 or self.gpu)


@pytest.fixture
def v2(monkeypatch):
    def make(cpus, gpu, types=None):
        fake = FakeV2(cpus, gpu)
        monkeypatch.setattr(demand_module, "request", fake.request)
        monkeypatch.setattr(Demand, "verdict", lambda self: fake.verdict())
        cap = Capacity(0, 0, True, types, None, None, "v2")
        lines = []
        return fake, Demand(cap, lines.append), lines
    return make


def test_unknown_types_grow_in_steps_and_settle_on_what_the_cluster_holds(v2):
    fake, d, lines = v2(cpus=20, gpu=False)
    assert d.ask("vocab", cpus=256) == 20
    asked = [h["cpus"] for h in d.history]
    assert asked[0] == 8 and max(asked) < 256  # never one jump to 256
    assert asked[:3] == [8, 16, 32] and asked[-1] == 20
    assert len(fake.constraint) == 20
    assert any("cannot meet 32 CPUs" in line for line in lines)
    # What was refused is not asked again, and what was met is not checked again.
    looks = fake.looks
    assert d.ask("embed", cpus=256) == 20 and fake.looks == looks
    assert d.ask("glove", cpus=4) == 4 and fake.looks == looks


def test_known_types_ask_at_once_and_ask_for_fewer_where_refused(v2):
    types = (NodeType("cpu", {"CPU": 4}, 2),)
    fake, d, _ = v2(cpus=6, gpu=False, types=types)  # the types said 8, the cluster holds 6
    assert d.ask("vocab", cpus=8) == 6
    assert [h["cpus"] for h in d.history][0] == 8
    assert len(fake.constraint) == 6


def test_a_gpu_that_cannot_come_is_dropped_and_the_cpus_still_asked(v2):
    fake, d, lines = v2(cpus=4, gpu=False, types=(NodeType("cpu", {"CPU": 4}, 1),))
    assert d.ask("vocab", cpus=4, gpu=True) == 4
    assert d.gpu_refused and fake.constraint == [{"CPU": 1}] * 4
    assert any("cannot launch a GPU node" in line for line in lines)
    assert d.ask("glove", cpus=4, gpu=True) == 4 and fake.constraint == [{"CPU": 1}] * 4


def test_unknown_types_the_gpu_is_asked_for_not_waited_for(v2):
    _, d, _ = v2(cpus=8, gpu=False)
    cap = Capacity(0, 0, True, None, None, None, "v2")
    plan = plan_gpu("auto", cap, None, d)
    assert plan.request is False and "k-means and GloVe run on CPU" in plan.note
    assert d.history[0] == {"stage": "probe: GPU", "cpus": 0, "gpu": True}
    _, d, _ = v2(cpus=8, gpu=False)
    with pytest.raises(VgrayError, match=r"^--device cuda, but the Ray cluster has no GPU and "
                                         r"cannot launch one \(the autoscaler \(v2\) cannot "
                                         r"launch one, node types unknown\)$"):
        plan_gpu("cuda", cap, None, d)
    _, d, _ = v2(cpus=8, gpu=True)
    plan = plan_gpu("cuda", cap, None, d)
    assert plan.request and plan.required and plan.wait_s == 600.0  # it can come: boot time


def test_v1_requests_are_sent_as_asked(monkeypatch):
    sent = []
    monkeypatch.setattr(demand_module, "request", lambda wanted, v2: sent.append((len(wanted), v2)))
    d = Demand(Capacity(0, 0, True, None, None, None, "v1"))
    assert d.ask("scan", cpus=256, gpu=True) == 256 and sent == [(257, False)]
    assert plan_gpu("auto", Capacity(0, 0, True, None), None, d).wait_s == 120.0  # no v2 to ask


def test_the_request_is_cleared_only_while_it_is_this_runs(monkeypatch):
    sent = []
    monkeypatch.setattr(demand_module, "request", lambda wanted, v2: sent.append(list(wanted)))
    lines = []
    d = Demand(Capacity(0, 0, True, None, None, None, "v1"), lines.append)
    d.ask("vocab", cpus=2)
    monkeypatch.setattr(Demand, "still_ours", lambda self: False)  # another run asked since
    d.clear()
    assert sent == [[{"CPU": 1}] * 2] and "another run's request" in lines[0]
    d.ask("vocab", cpus=3)
    monkeypatch.setattr(Demand, "still_ours", lambda self: True)
    d.clear()
    assert sent[-1] == [] and d.history[-1]["stage"] == "end"


def test_a_fixed_cluster_is_never_asked(monkeypatch):
    monkeypatch.setattr(demand_module, "request", lambda *a: pytest.fail("asked"))
    d = Demand(Capacity(2, 0, False, None))
    assert d.ask("vocab", cpus=2, gpu=True) == 2
    d.clear()
    assert d.history == []
