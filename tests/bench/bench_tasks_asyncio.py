#!/usr/bin/python3
"""bench_tasks_asyncio.py - the tasks benchmark's workload in plain asyncio.

The reference side of tests/bench/bench_tasks.c: the same phases, the same N,
on one asyncio event loop (the engine under Sanic), standard library only.
Run it with the system interpreter: /usr/bin/python3 bench_tasks_asyncio.py
[-n N] [-r R]. It prints one line per phase:

    asyncio idle: <bytes> B/task
    asyncio wake: <rate>/s
    asyncio spawn: <rate>/s
    asyncio cancel: <rate>/s

With -r R > 1 each rate line adds the median of the R runs; the rate shown
is the best. Memory is measured in the first run only, on a fresh process
(later runs reuse memory the allocator kept, which would flatter them).

Phases, in this order (bench_tasks.c runs the same order):
  idle   N tasks each wait on one shared event; resident memory per task.
  wake   set that event; time until all N have woken (the last one to wake
         sets a "done" event the driver waits on).
  spawn  create N tasks that increment a counter and return; time until the
         last one has run.
  cancel N tasks named "t<i>" sleep for an hour; time cancelling them one by
         one by name from a registry dict and awaiting each (Sanic's
         app.cancel_task: get_task(name), task.cancel(), await task).
"""

import argparse
import asyncio
import gc
import statistics
import sys
import time

MONO = time.CLOCK_MONOTONIC


def now():
    return time.clock_gettime(MONO)


def vm_rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class State:
    """Counters shared by the tasks of a phase (one loop, so no locks)."""

    def __init__(self, n):
        self.n = n
        self.count = 0
        self.done = asyncio.Event()


async def waiter(st, wake):
    st.count += 1  # "I am waiting" (counted before the await, as in C)
    await wake.wait()
    st.woken += 1
    if st.woken == st.n:
        st.done.set()


async def spawned(st):
    st.count += 1
    if st.count == st.n:
        st.done.set()


async def sleeper(st):
    st.count += 1
    await asyncio.sleep(3600)


async def settle(st, want):
    """Yields to the loop until want tasks have reached their await."""
    spins = 0
    while st.count < want:
        await asyncio.sleep(0)
        spins += 1
        if spins > 1000:
            await asyncio.sleep(0.001)


async def phase_idle_wake(n, measure_mem):
    loop = asyncio.get_running_loop()
    gc.collect()
    st = State(n)
    st.woken = 0
    wake = asyncio.Event()
    rss0 = vm_rss_bytes()
    tasks = [loop.create_task(waiter(st, wake)) for _ in range(n)]
    await settle(st, n)
    rss1 = vm_rss_bytes()
    idle = (rss1 - rss0) / n if measure_mem else None

    t0 = now()
    wake.set()
    await st.done.wait()
    t1 = now()
    assert st.woken == n, st.woken
    del tasks
    return idle, n / (t1 - t0)


async def phase_spawn(n):
    loop = asyncio.get_running_loop()
    gc.collect()
    st = State(n)
    t0 = now()
    tasks = [loop.create_task(spawned(st)) for _ in range(n)]
    await st.done.wait()
    t1 = now()
    assert st.count == n, st.count
    del tasks
    return n / (t1 - t0)


async def phase_cancel(n):
    loop = asyncio.get_running_loop()
    gc.collect()
    st = State(n)
    registry = {}
    for i in range(n):
        name = f"t{i}"
        registry[name] = loop.create_task(sleeper(st), name=name)
    await settle(st, n)

    t0 = now()
    for i in range(n):
        task = registry[f"t{i}"]
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
    t1 = now()
    assert all(t.cancelled() for t in registry.values())
    registry.clear()
    return n / (t1 - t0)


async def main(n, reps):
    res = {"wake": [], "spawn": [], "cancel": []}
    idle = None
    for r in range(reps):
        mem, wake = await phase_idle_wake(n, measure_mem=(r == 0))
        if r == 0:
            idle = mem
        res["wake"].append(wake)
        gc.collect()
        res["spawn"].append(await phase_spawn(n))
        gc.collect()
        res["cancel"].append(await phase_cancel(n))
        gc.collect()
    return idle, res


def report(prefix, idle, res, reps):
    print(f"{prefix} idle: {idle:.0f} B/task")
    for phase in ("wake", "spawn", "cancel"):
        v = res[phase]
        line = f"{prefix} {phase}: {max(v):.0f}/s"
        if reps > 1:
            line += f" (best of {reps}; median {statistics.median(v):.0f}/s)"
        print(line)


def positive(s):
    v = int(s)
    if v <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return v


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=positive, default=100000, help="tasks per phase")
    ap.add_argument("-r", type=positive, default=1, help="repetitions")
    a = ap.parse_args()
    idle, res = asyncio.run(main(a.n, a.r))
    report("asyncio", idle, res, a.r)
    sys.stdout.flush()
