"""Load test of `tinyrm serve` on 127.0.0.1: concurrent clients against the batching server, compared with
one offline `rm.score` call over the same texts. Writes results/serve.md.

    .venv/bin/python bench/serve_load.py                     # 16 clients, 200 requests of 1-8 responses
    .venv/bin/python bench/serve_load.py --requests 40       # quicker

Texts: a seeded sample of RewardBench responses (chosen and rejected) with their prompts. Each request
POSTs 1-8 of them to /score on a kept-alive connection. Model: --model, else the newest run (runs/LATEST)
if it is pointwise, else MiniLM-L6 (weights/minilm-l6) as an untrained pointwise cloze model — the cost
of a forward does not depend on training. Throughput is responses/s over the whole load phase; the
offline figure is one `rm.score` over all the texts, timed before and after the load phase (their mean is
the reference). Bounded: --requests requests, and clients stop taking new ones after --max-seconds.
"""
from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import threading
import time
from pathlib import Path

from inputs import ROOT, minilm_path, rewardbench_sample
from machine import OtherLoad, machine_info
from tables import md_table

OUT = Path(__file__).resolve().parent / "results" / "serve.md"


def load_model(name: str | None):
    """(rm, description): --model, the newest pointwise run, or untrained MiniLM-L6 (module docstring)."""
    import tinyrm
    from tinyrm.scorer import RewardModel

    if name:
        rm = RewardModel.load(name)
        return rm, f"{name} ({rm.mode})"
    latest = ROOT / "runs" / "LATEST"
    if latest.is_file():
        run = ROOT / "runs" / latest.read_text().strip()
        rm = RewardModel.load(run)
        if rm.mode == "pointwise":
            return rm, f"trained run {run.name} (pointwise)"
    folder = ROOT / "weights" / "minilm-l6"
    folder = folder if (folder / "config.json").is_file() else minilm_path()
    return RewardModel(tinyrm.load_encoder(folder), mode="pointwise"), \
        "MiniLM-L6 as an untrained pointwise cloze model (no trained pointwise run here)"


def make_requests(n: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """n requests of 1-8 (prompt, response) pairs drawn from a seeded RewardBench sample."""
    pool = [(q, r) for q, c, j in rewardbench_sample(400, seed) for r in (c, j)]
    rng = random.Random(seed)
    reqs = []
    for _ in range(n):
        picks = [pool[rng.randrange(len(pool))] for _ in range(rng.randint(1, 8))]
        reqs.append(([q for q, _ in picks], [r for _, r in picks]))
    return reqs


def run_clients(port: int, reqs, clients: int, max_seconds: float):
    """Every client takes the next request until none are left or time is up; (results, latencies, errors,
    wall seconds, responses served). results[i] is the rewards of request i (None if not sent or failed)."""
    results, lat, errors = [None] * len(reqs), [], []
    nxt, lock, t0 = iter(range(len(reqs))), threading.Lock(), time.perf_counter()

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        while time.perf_counter() - t0 < max_seconds:
            with lock:
                i = next(nxt, None)
            if i is None:
                break
            body = json.dumps({"prompts": reqs[i][0], "responses": reqs[i][1]})
            t = time.perf_counter()
            try:
                conn.request("POST", "/score", body=body, headers={"Content-Type": "application/json"})
                r = conn.getresponse()
                data = r.read()
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status}: {data[:200]!r}")
                results[i] = json.loads(data)["rewards"]
            except Exception as e:                                    # counted, and a fresh connection
                with lock:
                    errors.append(f"request {i}: {e}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
                continue
            with lock:
                lat.append(time.perf_counter() - t)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    served = sum(len(r) for r in results if r is not None)
    return results, lat, errors, wall, served


def offline(rm, reqs) -> tuple[float, list[float]]:
    """(seconds, rewards) of one rm.score over every request's texts, run in a fresh thread as the server's
    model worker is: on an oversubscribed machine the same call measured 17 s on the main thread and 4 s on
    a new one (both torch.get_num_threads() == 2), so the two sides must run on the same kind of thread."""
    prompts = [q for r in reqs for q in r[0]]
    responses = [x for r in reqs for x in r[1]]
    out = []

    def run():
        t = time.perf_counter()
        rewards = rm.score(prompts, responses)
        out.append((time.perf_counter() - t, rewards))

    th = threading.Thread(target=run)
    th.start()
    th.join()
    return out[0]


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p / 100 * len(xs)) - 1))]


def serve_phase(rm, reqs, args) -> dict:
    """The server in a thread, the clients against it; what run_clients measured plus the model calls."""
    from tinyrm.serve import make_server

    server = make_server(rm, "127.0.0.1", 0, window_s=args.window_ms / 1000)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = run_clients(server.server_address[1], reqs, args.clients, args.max_seconds)
    finally:
        server.shutdown()
        server.server_close()
        server.batcher.close()
    return dict(zip(("results", "lat", "errors", "wall", "served"), out), calls=server.batcher.calls)


def report(args, model_desc: str, load: float, reqs, ref, t_before: float, t_after: float, ph: dict) -> str:
    """The Markdown page: machine and setup lines, then the table."""
    n_texts, at, diffs = sum(len(r[1]) for r in reqs), 0, []
    for r, req in zip(ph["results"], reqs):
        if r is not None:
            diffs += [abs(a - b) for a, b in zip(r, ref[at:at + len(req[1])])]
        at += len(req[1])
    done, errors, served = sum(r is not None for r in ph["results"]), ph["errors"], ph["served"]
    off_rate, rate, lat = n_texts / statistics.mean([t_before, t_after]), served / ph["wall"], ph["lat"]
    rows = [
        ["requests sent / answered / errors", f"{done + len(errors)} / {done} / {len(errors)}"],
        ["responses scored through the server", f"{served} (of {n_texts})"],
        ["server throughput (responses/s)", f"{rate:.1f}"],
        ["offline rm.score, one call (responses/s; before, after)",
         f"{off_rate:.1f} ({n_texts / t_before:.1f}, {n_texts / t_after:.1f})"],
        ["server / offline", f"{rate / off_rate:.2f}× (goal ≥ 0.8× — {'met' if rate >= 0.8 * off_rate else '**not met**'})"],
        ["latency p50 / p99 (s)", f"{pct(lat, 50):.2f} / {pct(lat, 99):.2f}" if lat else "n/a"],
        ["model calls (mean responses per call)", f"{ph['calls']} ({served / max(1, ph['calls']):.1f})"],
        ["max \\|served − offline reward\\|", f"{max(diffs):.1e}" if diffs else "n/a"],
    ]
    info = machine_info()
    text = (f"# tinyrm serve under load\n\nMachine: {info['cpu']}, {info['usable_cores']} usable cores; torch "
            f"{info['torch']}, {info['threads']} threads. Other processes kept {load:.2f} cores busy on "
            f"average (from /proc/stat).\nModel: {model_desc}, float32 on CPU. {args.clients} concurrent clients "
            f"on 127.0.0.1, {args.requests} requests of 1–8 RewardBench responses each (seed {args.seed}), "
            f"gathering window {args.window_ms:g} ms; `python bench/serve_load.py`.\n\n"
            + md_table(["measure", "value"], rows) + "\n")
    if errors:
        text += "\nFirst errors:\n" + "\n".join(f"- {e}" for e in errors[:5]) + "\n"
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--max-seconds", type=float, default=300.0, help="clients take no new request after this")
    ap.add_argument("--window-ms", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()

    rm, model_desc = load_model(args.model)
    reqs = make_requests(args.requests, args.seed)
    offline(rm, reqs[:1])                                                  # warm-up
    load = OtherLoad()
    t_before, ref = offline(rm, reqs)
    ph = serve_phase(rm, reqs, args)
    t_after, _ = offline(rm, reqs)
    text = report(args, model_desc, load.cores(), reqs, ref, t_before, t_after, ph)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
