"""Data parallelism over processes started by a launcher (torchrun, or anything that sets its variables).

A launcher sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in every process it starts;
`init` then joins the process group (NCCL for a CUDA device, gloo for the CPU) and gives each process its
own GPU (cuda:LOCAL_RANK). Without those variables, or with WORLD_SIZE=1, there is no process group and
every helper here is the identity: a single process runs exactly the code it always ran.

Gradients: each rank runs the backward of its share of an optimiser step's pairs, then `sum_grads`
all-reduces (SUM) the gradients of the parameters the optimiser steps, once per step, after the last
micro-batch. We chose this over wrapping the model in DistributedDataParallel because
  - the trainer reaches the encoder through encode_packed/logits_at, not forward(); DDP arms its reducer
    only inside its own forward(), so it would need a second entry point into the model;
  - packing cuts each rank's share into its own number of micro-batches (a rank may even get no pair in a
    short step); DDP needs one synced backward on every rank per step, which here would take no_sync()
    bookkeeping and dummy backwards, while one explicit all-reduce after accumulation is the same on
    every rank by construction;
  - what trains is adapters (a few MB): one flat all-reduce per step costs little next to the step, so
    DDP's overlap of communication with the backward buys nothing worth the above;
  - "what the optimiser steps" is exactly what trains, the length expert's β included (it lives outside
    the encoder); frozen weights are never communicated.
The loss normalisation that makes this the single-process gradient: one process minimises
L = (1/n) Σ_{i in step} ℓ_i with n the step's number of diffs. Rank r back-propagates
L_r = (1/n) Σ_{i in S_r} ℓ_i with the same global n (not its own |S_r|), and the S_r partition the
step, so Σ_r ∇L_r = ∇L: a SUM all-reduce with no further factor. (DDP averages over the W ranks, so
there each rank would have to scale its loss by W/n instead.)
"""
from __future__ import annotations

import atexit
import datetime
import hashlib
import os

import torch
import torch.distributed as dist
from tqdm import tqdm

from .checkpoint import rng_state, set_rng_state
from .errors import TinyrmError

ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# validation runs on rank 0 while the others wait at a barrier: give that wait room on a slow CPU run
TIMEOUT = datetime.timedelta(minutes=int(os.environ.get("TINYRM_DIST_TIMEOUT_MIN", "60")))
BUCKET = 1 << 25                 # elements per all-reduce of gradients (128 MB of float32)
_comm = torch.device("cpu")      # where collectives put their tensors: the rank's GPU under NCCL
_created = False                 # whether `init` made the process group (then `shutdown` ends it)


def launched() -> bool:
    """Whether a launcher started this process as one of several (its variables set, WORLD_SIZE > 1)."""
    return all(k in os.environ for k in ENV) and int(os.environ["WORLD_SIZE"]) > 1


def init(device: torch.device) -> torch.device:
    """Join the launcher's process group (once) and return this rank's device: a CUDA device without an
    index becomes cuda:LOCAL_RANK. Without a launcher: nothing happens and `device` comes back."""
    global _comm, _created
    if not launched():
        return device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=TIMEOUT)
        _created = True
        if backend == "gloo":           # a gloo group left open aborts the interpreter at exit
            atexit.register(shutdown)
    _comm = device if dist.get_backend() == "nccl" else torch.device("cpu")
    return device


def finished(result):
    """At the end of a run on every rank: rank 0's `result` everywhere, then the group `init` made ends
    (a run that raised leaves it to the launcher, which takes every rank down)."""
    result = broadcast_object(result)
    shutdown()
    return result


def shutdown() -> None:
    """End the process group `init` made (after a run that finished on every rank)."""
    global _created
    if _created and dist.is_initialized():
        dist.destroy_process_group()
    _created = False


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def is_main_process() -> bool:
    """Whether this is the launcher's rank 0 (or there is no launcher), also before `init` and after the
    group ended: for a command's own output after train() or evaluation returned."""
    return not launched() or os.environ["RANK"] == "0"


def say(msg: str) -> None:
    """tqdm.write on rank 0 only (every other rank would print the same line)."""
    if is_main():
        tqdm.write(msg)


def barrier() -> None:
    if is_distributed():
        dist.barrier(device_ids=[_comm.index]) if _comm.type == "cuda" else dist.barrier()


def shard(items: list) -> list:
    """This rank's fixed slice of `items`: items[rank::world] (all of them in one process)."""
    return items[rank()::world()]


def unshard(parts: list[list], n: int) -> list:
    """The inverse of `shard`: parts[r] = items[r::world] of a list of length n -> items in input order."""
    out = [None] * n
    for r, part in enumerate(parts):
        out[r::len(parts)] = part
    return out


def gather_in_order(local: list, n: int) -> list:
    """Every rank's `shard` of a list of n results -> the whole list in input order, on every rank."""
    return unshard(all_gather_object(local), n) if is_distributed() else list(local)


def all_gather_object(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (picklable objects: lists, dicts, CPU tensors)."""
    if not is_distributed():
        return [obj]
    out = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    """Rank 0's `obj` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=_comm)
    return box[0]


def check_same(value, what: str) -> None:
    """Raise on every rank when the ranks' `value`s (hashed by repr) differ: `what` names it."""
    if not is_distributed():
        return
    digest = hashlib.sha256(repr(value).encode()).hexdigest()
    seen = all_gather_object(digest)
    if len(set(seen)) > 1:
        bad = [r for r, d in enumerate(seen) if d != seen[0]]
        raise TinyrmError(f"ranks disagree on {what} (ranks {bad} differ from rank 0): every node needs the "
                           f"same data files, model and tinyrm version")


def _all_sum(x, dtype: torch.dtype):
    """x summed over every rank (x itself when not distributed)."""
    if not is_distributed():
        return x
    t = torch.tensor([x], dtype=dtype, device=_comm)
    dist.all_reduce(t)
    return t.item()


def sum_int(x: int) -> int:
    return int(_all_sum(x, torch.int64))


def sum_float(x: float) -> float:
    return float(_all_sum(x, torch.float64))


def gather_cat(parts: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """1-D tensors of this rank (maybe none) -> all ranks' concatenated, rank 0's first, on every rank."""
    local = torch.cat(parts) if parts else torch.zeros(0, device=device)
    if not is_distributed():
        return local
    sizes = torch.tensor([local.numel()], dtype=torch.int64, device=_comm)
    all_sizes = [torch.zeros_like(sizes) for _ in range(world())]
    dist.all_gather(all_sizes, sizes)
    n = [int(s.item()) for s in all_sizes]
    pad = torch.zeros(max(n), dtype=local.dtype, device=_comm)
    pad[:local.numel()] = local.to(_comm)
    got = [torch.empty_like(pad) for _ in n]
    dist.all_gather(got, pad)
    return torch.cat([g[:k] for g, k in zip(got, n)]).to(device)


def broadcast_params(params) -> None:
    """Rank 0's values of `params` on every rank (the trainable weights before the first step)."""
    if not is_distributed():
        return
    for p in params:
        t = p.data.to(_comm)
        dist.broadcast(t, src=0)
        p.data.copy_(t)


def sum_grads(params) -> None:
    """All-reduce (SUM) the gradients of `params` over the ranks, in flat buckets. A parameter that got no
    gradient on some rank counts as zero there; one that got none on any rank keeps grad None, as in one
    process (AdamW then leaves it and its state alone)."""
    params = list(params)
    if not is_distributed() or not params:
        return
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=_comm)
    dist.all_reduce(has)
    live = [p for p, h in zip(params, has.tolist()) if h > 0]
    for p in live:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_kind: dict = {}
    for p in live:
        by_kind.setdefault((p.grad.dtype, p.grad.device), []).append(p)
    for group in by_kind.values():
        bucket, size = [], 0
        for p in group + [None]:
            if p is None or (bucket and size + p.numel() > BUCKET):
                _reduce_bucket(bucket)
                bucket, size = [], 0
            if p is not None:
                bucket.append(p)
                size += p.numel()


def _reduce_bucket(bucket: list) -> None:
    if not bucket:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in bucket]).to(_comm)
    dist.all_reduce(flat)
    for p, g in zip(bucket, flat.split([p.numel() for p in bucket])):
        p.grad.copy_(g.view_as(p.grad))


def on_main(fn, *args):
    """fn(*args) on rank 0 while the others wait at a barrier (a step-0 validation, say)."""
    if is_main():
        fn(*args)
    barrier()


def start_together(params, seed: int, plan) -> None:
    """Before the first step: check every rank built the same `plan` (data and step plan), give every rank
    rank 0's values of the trainable `params` (they agree already: same seed), then each rank its own
    random stream (adapter dropout draws its own masks on each rank, as it would for other pairs)."""
    if not is_distributed():
        return
    check_same(plan, "the training data and step plan")
    broadcast_params(params)
    torch.manual_seed(seed + 1000 * rank())


def rng_states() -> list[dict]:
    """Every rank's RNG state (checkpoint.rng_state), rank 0's first, for rank 0 to save."""
    return all_gather_object(rng_state())


def restore_rng(trainer_state: dict, seed: int) -> None:
    """This rank's RNG state from a checkpoint: `rng_ranks` (one per rank) when it was saved by as many
    processes, else `rng`. Under another process count rank 0 takes `rng` and the others start fresh
    streams (only adapter dropout draws from them)."""
    states = trainer_state.get("rng_ranks") or [trainer_state["rng"]]
    if len(states) == world():
        set_rng_state(states[rank()])
        return
    set_rng_state(trainer_state["rng"])
    if not is_main():
        torch.manual_seed(seed + 1000 * rank() + trainer_state["step"])
    say(f"checkpoint saved by {len(states)} process(es), resumed by {world()}: only rank 0 keeps its random stream")
