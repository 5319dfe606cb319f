"""tinyrm plot: the picture shows exactly the file's numbers (read back from the drawn lines), at its size;
a resumed run's repeated steps count once; bad input and a missing matplotlib are one clear error."""
from __future__ import annotations

import json
import math
import struct
import sys

import pytest

from tinyrm.errors import DataError, MissingData, TinyrmError
from tinyrm.plot import curves, draw, plot_run, smooth


def _write_run(run):
    """30 training steps, validations at 0/10/20/30, and a resume that re-ran steps 21-25 (new values)."""
    rows, want_loss = [], {}
    for s in range(1, 31):
        rows.append({"step": s, "lr": 1e-3, "loss": 0.7 - 0.01 * s + 0.02 * (s % 3), "acc": 0.5 + 0.01 * s})
        want_loss[s] = rows[-1]["loss"]
    vals = {}
    for s in (0, 10, 20, 30):
        vals[s] = {"step": s, "val_score": 0.5 + 0.004 * s, "val_acc": 0.5, "val_acc_chat": 0.55 + 0.003 * s,
                   "val_acc_safety": 0.45 + 0.005 * s, "val_acc_chosen_first": 0.9, "val_acc_chosen_longer": 0.8,
                   "corrected_val_score": 0.49 + 0.004 * s, "corrected_val_acc_chat": 0.1}
    del vals[20]["val_acc_safety"]                                # a domain missing from one validation
    rows[10:10] = [vals[0], vals[10]]
    rows += [vals[20], vals[30]]
    for s in range(21, 26):                                      # resumed from step 20's checkpoint
        rows.append({"step": s, "loss": 0.3 + 0.001 * s, "acc": 0.7})
        want_loss[s] = rows[-1]["loss"]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    return want_loss, vals


def test_smooth_by_hand():
    # beta 0.5: s1 = 0.5 -> 0.5 / 0.5 = 1; s2 = 0.25 -> 0.25 / 0.75 = 1/3; s3 = 0.125 + 0.5 = 0.625 / 0.875
    assert smooth([1.0, 0.0, 1.0], beta=0.5) == pytest.approx([1.0, 1 / 3, 0.625 / 0.875])


def _lines(fig):
    return {ln.get_label(): ln for ax in fig.axes for ln in ax.get_lines()}


def test_picture_shows_the_files_numbers(tmp_path):
    want_loss, vals = _write_run(tmp_path)
    c = curves(tmp_path / "metrics.jsonl")
    lines = _lines(draw(c))
    steps = sorted(want_loss)
    assert list(lines["loss"].get_xdata()) == steps == list(range(1, 31))
    assert list(lines["loss"].get_ydata()) == [want_loss[s] for s in steps]      # the resumed values won
    assert list(lines["smoothed (0.9)"].get_ydata()) == pytest.approx(smooth([want_loss[s] for s in steps]))
    assert list(lines["val_score"].get_xdata()) == [0, 10, 20, 30]
    assert list(lines["val_score"].get_ydata()) == [vals[s]["val_score"] for s in (0, 10, 20, 30)]
    assert list(lines["val_score, length-corrected"].get_ydata()) == [vals[s]["corrected_val_score"]
                                                                      for s in (0, 10, 20, 30)]
    assert list(lines["val_acc_chat"].get_ydata()) == [vals[s]["val_acc_chat"] for s in (0, 10, 20, 30)]
    safety = list(lines["val_acc_safety"].get_ydata())
    assert math.isnan(safety[2]) and safety[:2] + safety[3:] == [vals[s]["val_acc_safety"] for s in (0, 10, 30)]
    # length/position splits and corrected per-domain keys are not domains
    assert sorted(k for k in lines if k.startswith("val_acc")) == ["val_acc_chat", "val_acc_safety"]


def test_plot_run_writes_a_png_of_the_size(tmp_path):
    _write_run(tmp_path)
    out = plot_run(tmp_path)
    assert out == tmp_path / "curves.png"
    head = out.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    assert struct.unpack(">II", head[16:24]) == (1200, 450)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_errors(tmp_path, monkeypatch, capsys):
    with pytest.raises(MissingData, match=r"metrics\.jsonl: not found"):
        plot_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 0.6}\n{"step": 2, "loss": \n')
    with pytest.raises(DataError, match=r"metrics\.jsonl:2: bad JSON"):
        plot_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"loss": 0.6}\n')
    with pytest.raises(DataError, match=r"metrics\.jsonl:1: no integer 'step'"):
        plot_run(tmp_path)
    from tinyrm.cli import main
    assert main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "metrics.jsonl:1: no integer 'step'" in err and err.count("\n") == 1
    _write_run(tmp_path)
    assert main(["plot", str(tmp_path)]) == 0 and (tmp_path / "curves.png").is_file()
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)     # as if matplotlib were not installed
    with pytest.raises(TinyrmError, match=r"pip install 'tinyrm\[plot\]'"):
        plot_run(tmp_path)
