"""GPU placement (gpu/allocator.py) over a fake NVML, the one fake allowed
(there is no GPU here): the fake stands at the adapter boundary (gpu/nvml.py's
``Nvml``) and nowhere else. Packing, refusal with what each card has free,
memory used by others, MIG instances, whole cards, and, through a real
Runtime with real sandbox processes, an instance pinned to its slice and the
slice released when the instance stops. On this machine (no NVIDIA driver)
the real adapter is asked too: it must say "no GPU"."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from jupyter_functionai.backends.process import ProcessBackend
from jupyter_functionai.errors import NoCapacity
from jupyter_functionai.gpu import Device, GpuAllocator, GpuProcess, MigInstance
from jupyter_functionai.gpu.nvml import load
from jupyter_functionai.runtime import Runtime
from jupyter_functionai.spec import FunctionSpec

from .conftest import wait_for

GIB = 1024


class FakeNvml:
    """Devices whose memory and processes the test changes under the allocator."""

    def __init__(self, *devices: Device) -> None:
        self.list = list(devices)

    def devices(self) -> list[Device]:
        return list(self.list)

    def driver(self) -> str:
        return "fake"

    def use(self, index: int, used_mib: int) -> None:
        d = self.list[index]
        self.list[index] = dataclasses.replace(d, memory_used_mib=used_mib, processes=(GpuProcess(4242, used_mib),))


def card(i: int, gib: int = 80) -> Device:
    return Device(index=i, uuid=f"GPU-fake-{i}", name="Fake H100", memory_total_mib=gib * GIB, memory_used_mib=0)


def test_slices_are_packed_best_fit_and_refused_when_nothing_fits() -> None:
    alloc = GpuAllocator(FakeNvml(card(0), card(1)))
    a = alloc.allocate("a", 0.5)
    assert (a.devices, a.memory_mib) == (("GPU-fake-0",), 40 * GIB)
    b = alloc.allocate("b", 0.25)  # best fit: the half-full card, not the empty one
    assert b.devices == ("GPU-fake-0",) and b.memory_mib == 20 * GIB
    c = alloc.allocate("c", 0.5)
    assert c.devices == ("GPU-fake-1",)
    assert alloc.allocate("a", 0.5) is a  # asking again holds nothing more
    with pytest.raises(NoCapacity, match=r"GPU 0 \(Fake H100\): 20480 of 81920 MiB free; GPU 1 \(Fake H100\): 40960 of 81920 MiB free"):
        alloc.allocate("d", 0.75)
    assert alloc.release("c") == c and alloc.release("c") is None
    assert alloc.allocate("d", 0.75).devices == ("GPU-fake-1",)
    assert {s.owner for s in alloc.slices()} == {"a", "b", "d"}


def test_slices_round_up_to_whole_gib() -> None:
    alloc = GpuAllocator(FakeNvml(card(0)))
    assert alloc.allocate("a", 0.3).memory_mib == 24 * GIB
    assert alloc.allocate("b", 0.33).memory_mib == 27 * GIB  # 26.4 GiB -> 27
    assert alloc.allocate("c", 0.001).memory_mib == 1 * GIB


def test_memory_used_outside_the_slices_counts_and_changes_under_the_allocator() -> None:
    nvml = FakeNvml(card(0), card(1))
    alloc = GpuAllocator(nvml)
    nvml.use(0, 70 * GIB)  # another process took most of card 0
    assert alloc.allocate("a", 0.25).devices == ("GPU-fake-1",)
    nvml.use(1, 75 * GIB)  # and then card 1 too: nothing lands on an over-full card
    with pytest.raises(NoCapacity, match=r"GPU 0 .*10240 of 81920 MiB free; GPU 1 .*5120 of 81920"):
        alloc.allocate("b", 0.25)
    nvml.use(0, 0)
    assert alloc.allocate("b", 0.25).devices == ("GPU-fake-0",)


def test_mig_instances_are_taken_one_slice_each() -> None:
    mig = tuple(MigInstance(j, f"MIG-fake-{j}", 10 * GIB) for j in range(7))
    nvml = FakeNvml(dataclasses.replace(card(0), mig_enabled=True, mig=mig))
    alloc = GpuAllocator(nvml)
    held = [alloc.allocate(f"i{j}", 0.1) for j in range(7)]  # 8 GiB fits a 10 GiB instance
    assert sorted(s.devices[0] for s in held) == [m.uuid for m in mig] and all(s.mig for s in held)
    with pytest.raises(NoCapacity, match=r"MIG.*0 of 7 instances free"):
        alloc.allocate("i7", 0.1)
    with pytest.raises(NoCapacity):
        GpuAllocator(nvml).allocate("big", 0.5)  # 40 GiB fits no 10 GiB instance


def test_whole_cards() -> None:
    nvml = FakeNvml(card(0), card(1), card(2))
    alloc = GpuAllocator(nvml)
    alloc.allocate("slice", 0.25)
    two = alloc.allocate("two", 2)
    assert set(two.devices) == {"GPU-fake-1", "GPU-fake-2"} and two.whole
    assert two.env()["CUDA_VISIBLE_DEVICES"] in ("GPU-fake-1,GPU-fake-2", "GPU-fake-2,GPU-fake-1")
    with pytest.raises(NoCapacity, match="1 whole card"):
        alloc.allocate("one", 1)
    with pytest.raises(NoCapacity):
        alloc.allocate("s2", 0.9)  # card 0 has 60 GiB free; 72 GiB asked
    assert alloc.allocate("s3", 0.5).devices == ("GPU-fake-0",)  # a card held whole takes no slice


def test_without_nvml_there_is_no_gpu() -> None:
    nvml, reason = load()  # this machine: no NVIDIA driver
    assert nvml is None and reason
    alloc = GpuAllocator(nvml, reason)
    snap = alloc.snapshot()
    assert snap["available"] is False and snap["reason"].startswith("no GPU found") and snap["devices"] == []
    with pytest.raises(NoCapacity, match="no GPU found"):
        alloc.allocate("x", 0.5)


SHOW = "import os\n\ndef handler(event, ctx):\n    return os.environ.get('CUDA_VISIBLE_DEVICES'), os.environ.get('FUNCTIONAI_GPU_MEMORY_MIB')\n"


async def test_an_instance_is_pinned_to_its_slice_and_releases_it_when_it_stops(tmp_path: Path) -> None:
    nvml = FakeNvml(card(0, gib=16), card(1, gib=16))
    backend = ProcessBackend(str(tmp_path / "state"), gpus=GpuAllocator(nvml))
    async with Runtime.open(tmp_path / "state", backend=backend, reap_interval=0.05) as rt:
        await rt.deploy(FunctionSpec.from_code("half", SHOW, gpu=0.5))
        await rt.deploy(FunctionSpec.from_code("most", SHOW, gpu=0.75))
        assert (await rt.invoke("half", session="s1")).value == ["GPU-fake-0", str(8 * GIB)]
        assert (await rt.invoke("half", session="s2")).value == ["GPU-fake-0", str(8 * GIB)]  # best fit: the same card
        assert (await rt.invoke("most", session="s3")).value == ["GPU-fake-1", str(12 * GIB)]
        snap = rt.gpus()
        assert snap["available"] and [len(d["slices"]) for d in snap["devices"]] == [2, 1]
        assert {s["function"] for s in snap["slices"]} == {"half", "most"}
        with pytest.raises(NoCapacity, match=r"no GPU can take gpu=0\.5 now"):
            await rt.invoke("half", session="s4")
        await rt.close_session("s1")
        # the stopped instance's slice is free again: a new session lands where it was
        assert (await rt.invoke("half", session="s4")).value == ["GPU-fake-0", str(8 * GIB)]
        held = {s["instance_id"] for s in rt.gpus()["slices"]}
        live = {i.id for i in rt.live_instances()}
        assert len(held) == 3 and held <= live
    assert backend.gpus.slices() == []  # closing the runtime stopped every instance: nothing held


def test_gpu_memory_asks_for_whole_gib_of_one_card() -> None:
    nvml = FakeNvml(card(0, gib=24), card(1, gib=80))
    alloc = GpuAllocator(nvml)
    four = alloc.allocate("a", memory_mib=4 * GIB)
    assert four.devices == ("GPU-fake-0",) and four.memory_mib == 4 * GIB  # the tighter fit
    assert alloc.allocate("b", memory_mib=40 * GIB).devices == ("GPU-fake-1",)  # too big for card 0
    with pytest.raises(NoCapacity, match="gpu_memory=48GiB"):
        alloc.allocate("c", memory_mib=48 * GIB)
    assert alloc.never_fits(memory_mib=80 * GIB) is None  # an empty card 1 would hold it
    assert "largest card (or MIG instance) has 81920 MiB" in (alloc.never_fits(memory_mib=96 * GIB) or "")
    assert "needs 3 whole card(s); this machine has 2" in (alloc.never_fits(3) or "")


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"gpu_memory": "1.5GiB"}, "whole GiB"),
        ({"gpu_memory": "512Mi"}, "between 1024"),
        ({"gpu_memory": "4GiB", "gpu": 0.5}, "not both"),
        ({"gpu_memory": "lots"}, "a size like"),
    ],
)
def test_a_bad_gpu_memory_is_refused_with_the_field(fields: dict[str, object], says: str) -> None:
    from jupyter_functionai.errors import InvalidSpec

    with pytest.raises(InvalidSpec, match=says) as ei:
        FunctionSpec.from_code("g", "def handler(e, c):\n    return 1\n", **fields)
    assert "gpu_memory_mb" in str(ei.value)


def test_the_spec_of_a_function_without_gpu_memory_is_unchanged() -> None:
    spec = FunctionSpec.from_code("g", "def handler(e, c):\n    return 1\n", gpu=0.5)
    assert "gpu_memory_mb" not in spec.to_dict()["resources"]  # specs stored before it compare equal
    with_mem = FunctionSpec.from_code("g", "def handler(e, c):\n    return 1\n", gpu_memory="4GiB")
    assert FunctionSpec.from_dict(with_mem.to_dict()) == with_mem


async def test_a_request_no_card_can_ever_hold_is_refused_at_deploy(tmp_path: Path) -> None:
    from jupyter_functionai.errors import InvalidSpec

    backend = ProcessBackend(str(tmp_path / "state"), gpus=GpuAllocator(FakeNvml(card(0, gib=16))))
    async with Runtime.open(tmp_path / "state", backend=backend, reap_interval=0.05) as rt:
        with pytest.raises(InvalidSpec, match=r"largest card .* 16384 MiB"):
            await rt.deploy(FunctionSpec.from_code("huge", SHOW, gpu_memory="24GiB"))
        with pytest.raises(InvalidSpec, match="2 whole card"):
            await rt.deploy(FunctionSpec.from_code("two", SHOW, gpu=2))
        assert [f["name"] for f in rt.functions()] == []
        await rt.deploy(FunctionSpec.from_code("fits", SHOW, gpu_memory="8GiB"))
        assert (await rt.invoke("fits", session="s")).value == ["GPU-fake-0", str(8 * GIB)]


async def test_without_a_gpu_gpu_memory_is_refused_at_deploy_and_a_share_stays_advisory(rt: Runtime) -> None:
    from jupyter_functionai.errors import InvalidSpec

    with pytest.raises(InvalidSpec, match="no GPU found"):
        await rt.deploy(FunctionSpec.from_code("mem", SHOW, gpu_memory="4GiB"))
    await rt.deploy(FunctionSpec.from_code("share", SHOW, gpu=0.5))
    assert (await rt.invoke("share")).value == [None, None]  # not placed: no CUDA_VISIBLE_DEVICES


SLOW = "import os, time\n\ndef handler(event, ctx):\n    time.sleep(event.get('sleep', 0))\n    return os.getpid()\n"


async def test_the_watchdog_ends_an_instance_over_its_slice_and_spares_its_neighbour(tmp_path: Path) -> None:
    """NVML (the fake) reports the instance's process using more than its
    4 GiB slice: the watchdog ends that instance, its caller gets
    gpu_out_of_memory with the figures, and the neighbour on the same card,
    within its slice, keeps its session and answers."""
    from jupyter_functionai.errors import GpuOutOfMemory

    nvml = FakeNvml(card(0, gib=16))
    backend = ProcessBackend(str(tmp_path / "state"), gpus=GpuAllocator(nvml))
    async with Runtime.open(tmp_path / "state", backend=backend, reap_interval=0.05) as rt:
        await rt.deploy(FunctionSpec.from_code("g", SLOW, gpu_memory="4GiB", timeout=120))
        await rt.invoke("g", {}, session="greedy")
        await rt.invoke("g", {}, session="modest")
        pids = {i.bound_session: i.pid for i in rt.live_instances()}
        iso = next(i for i in rt.live_instances() if i.bound_session == "greedy").isolation
        assert iso["gpu"] == "GPU-fake-0 4096 MiB (watchdog)"
        greedy = next(i for i in backend._instances.values() if i.bound_session == "greedy")
        call = asyncio.ensure_future(rt.invoke("g", {"sleep": 60}, session="greedy"))
        await wait_for(lambda: bool(greedy._pending), 30, "the call to be in flight")
        nvml.list[0] = dataclasses.replace(
            nvml.list[0], memory_used_mib=9 * GIB, processes=(GpuProcess(pids["greedy"], 6 * GIB), GpuProcess(pids["modest"], 3 * GIB))
        )
        with pytest.raises(GpuOutOfMemory) as ei:
            await asyncio.wait_for(call, 60)
        assert ei.value.details["used_mib"] == 6 * GIB and ei.value.details["slice_mib"] == 4 * GIB
        assert "more than its slice of 4096 MiB" in str(ei.value)
        # the neighbour is untouched: same instance, same session
        assert (await rt.invoke("g", {}, session="modest")).value is not None
        assert {i.bound_session: i.pid for i in rt.live_instances()}.get("modest") == pids["modest"]
        assert [s.owner for s in backend.gpus.slices()] == [i.id for i in rt.live_instances() if i.bound_session == "modest"]


def test_the_watchdog_counts_use_off_the_slice_card_and_without_a_slice() -> None:
    """CUDA_VISIBLE_DEVICES is only an environment variable: code in a sandbox
    can unset it and open another card. Memory an instance's process holds on
    a card that is not its slice's, or any GPU memory of an instance without a
    slice, is over what it may use; the host's own processes are not judged."""
    nvml = FakeNvml(card(0, gib=16), card(1, gib=16))
    gpus = GpuAllocator(nvml)
    mine = gpus.allocate("i-a", memory_mib=4 * GIB)
    assert mine.indexes == (0,)
    owners = {101: "i-a", 102: "i-a", 201: "i-cpu"}
    nvml.list[0] = dataclasses.replace(nvml.list[0], processes=(GpuProcess(101, 3 * GIB),))
    assert gpus.over_slice(owners.get) == []  # within its slice on its own card
    nvml.list[1] = dataclasses.replace(nvml.list[1], processes=(GpuProcess(102, 100), GpuProcess(999, 8 * GIB)))
    assert gpus.over_slice(owners.get) == [("i-a", 100, 0)]  # 100 MiB on card 1, which it holds nothing of
    nvml.list[1] = dataclasses.replace(nvml.list[1], processes=(GpuProcess(201, 512), GpuProcess(999, 8 * GIB)))
    assert gpus.over_slice(owners.get) == [("i-cpu", 512, 0)]  # a CPU function on a GPU; pid 999 is the host's


async def test_an_instance_without_a_slice_that_uses_a_gpu_is_stopped(tmp_path: Path) -> None:
    from jupyter_functionai.errors import GpuOutOfMemory

    nvml = FakeNvml(card(0, gib=16))
    backend = ProcessBackend(str(tmp_path / "state"), gpus=GpuAllocator(nvml))
    async with Runtime.open(tmp_path / "state", backend=backend, reap_interval=0.05) as rt:
        await rt.deploy(FunctionSpec.from_code("cpu", SLOW, timeout=120))
        await rt.invoke("cpu", {}, session="c")
        (inst,) = [i for i in backend._instances.values() if i.bound_session == "c"]
        call = asyncio.ensure_future(rt.invoke("cpu", {"sleep": 60}, session="c"))
        await wait_for(lambda: bool(inst._pending), 30, "the call to be in flight")
        nvml.list[0] = dataclasses.replace(nvml.list[0], memory_used_mib=GIB, processes=(GpuProcess(inst.pid, GIB),))
        with pytest.raises(GpuOutOfMemory, match="on a card it holds no slice of") as ei:
            await asyncio.wait_for(call, 60)
        assert ei.value.details["slice_mib"] == 0


def test_first_fit_is_there_for_comparison() -> None:
    for policy, expected in (("best-fit", "GPU-fake-1"), ("first-fit", "GPU-fake-0")):
        nvml = FakeNvml(card(0), card(1))
        nvml.use(1, 40 * GIB)  # card 1 half full: the tighter fit for 8 GiB
        assert GpuAllocator(nvml, policy=policy).allocate("small", memory_mib=8 * GIB).devices == (expected,), policy
    with pytest.raises(ValueError, match="policy must be one of"):
        GpuAllocator(None, "none", policy="random")


def test_the_device_script_runs_its_plumbing_without_a_gpu(tmp_path: Path) -> None:
    """benchmarks/gpu_slices.py is what a lent GPU runs; its dry run (numpy,
    a stand-in NVML fed by what each instance says it uses) must place the
    slice sessions, run them at once and see the greedy neighbour stopped."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "slices.json"
    p = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "gpu_slices.py"), "--cpu-dry-run", "--seconds", "2", "--size", "64", "--max-sessions", "4",
         "--host-memory", "512MiB", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=root,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["sessions"] == 3 and res["mode"] == "GPU-dry-0 4096 MiB (watchdog)", res  # 4 placed, one closed for the neighbour
    assert res["alone"]["failed"] == [] and res["with_greedy"]["failed"] == []
    greedy = res["with_greedy"]["greedy"]
    assert greedy["stopped"] and (greedy["used_mib"], greedy["slice_mib"]) == (8192, 4096), greedy
    assert "slice sessions on one card: 3 of 4 GiB" in p.stdout
