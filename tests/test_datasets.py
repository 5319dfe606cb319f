"""`tinyrm data` against a local stand-in for the hub and raw.githubusercontent.com (tests/hub_server.py).

The test writes tiny upstream files in each source's real layout (parquet, JSON Lines, gzip, CSV, JSON),
runs the real converters through a test table pointing at them, and compares every written row with rows
written out by hand here. Never touches the internet.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import re
from dataclasses import replace
from pathlib import Path

import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from tinyrm import cli, datasets                               # noqa: E402
from tinyrm import sources as S                                # noqa: E402
from tinyrm.datasets import FetchError, fetch, select          # noqa: E402
from tinyrm.sources import SEED, SOURCES, Remote, Source       # noqa: E402
from tinyrm.paths import data_root                             # noqa: E402
from hub_server import HubServer                               # noqa: E402

REV = {k: hashlib.sha1(k.encode()).hexdigest() for k in ("rb", "hh", "uf", "pku", "arena", "dahoas", "se", "rmb")}


def _parquet(rows: list[dict]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


# ---- upstream fixtures, one per layout, with the rows they must become ----

RB = [dict(prompt="p1", chosen="c1", chosen_model="m1", rejected="r1", rejected_model="n1", subset="hep-go", id=3),
      dict(prompt="p2", chosen="c2", chosen_model="m2", rejected="r2", rejected_model="n2", subset="math-prm", id=3)]
HH_TEST = [{"chosen": f"\n\nHuman: q{i}\n\nAssistant: good {i}", "rejected": f"\n\nHuman: q{i}\n\nAssistant: bad {i}"}
           for i in range(3)]
HH_TRAIN = [{"chosen": f"\n\nHuman: t{i}\n\nAssistant: yes", "rejected": f"\n\nHuman: t{i}\n\nAssistant: no"}
            for i in range(5)]


def _msgs(*turns):
    return [{"role": r, "content": c} for r, c in turns]


UF = [  # TRL conversational rows; text is kept verbatim
    {"chosen": _msgs(("user", " Hi? "), ("assistant", " Hello! ")), "rejected": _msgs(("user", " Hi? "), ("assistant", "Go.")),
     "score_chosen": 8.0, "score_rejected": 3.0},
    {"chosen": _msgs(("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d1")),
     "rejected": _msgs(("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d2")),
     "score_chosen": 5.0, "score_rejected": 4.0},
    {"chosen": _msgs(("user", "same"), ("assistant", "z")), "rejected": _msgs(("user", "same"), ("assistant", "z")),
     "score_chosen": 7.0, "score_rejected": 1.0},                       # identical answers: kept, as shipped
    {"chosen": _msgs(("user", "q1"), ("assistant", "x")), "rejected": _msgs(("user", "q2"), ("assistant", "y")),
     "score_chosen": 6.0, "score_rejected": 2.0},                       # different prompts: not a pair
    {"chosen": _msgs(("user", "q"), ("user", "x")), "rejected": _msgs(("user", "q"), ("assistant", "y")),
     "score_chosen": 6.0, "score_rejected": 2.0},                       # no assistant answer: not a pair
]
UF_OUT = [{"prompt": " Hi? ", "chosen": " Hello! ", "rejected": "Go.", "domain": "chat", "source": "ultrafeedback"},
          {"prompt": "User: a\n\nAssistant: b\n\nUser: c", "chosen": "d1", "rejected": "d2", "domain": "chat",
           "source": "ultrafeedback"},
          {"prompt": "same", "chosen": "z", "rejected": "z", "domain": "chat", "source": "ultrafeedback"}]
PKU = [{"prompt": "How?", "response_0": "unsafe", "response_1": "safe", "safer_response_id": 1, "better_response_id": 0},
       {"prompt": "Why?", "response_0": "fine", "response_1": "risky", "safer_response_id": 0, "better_response_id": 1},
       {"prompt": "Huh?", "response_0": "a", "response_1": "b", "safer_response_id": None}]
PKU_OUT = [{"prompt": "How?", "chosen": "safe", "rejected": "unsafe", "domain": "safety", "source": "pku-saferlhf"},
           {"prompt": "Why?", "chosen": "fine", "rejected": "risky", "domain": "safety", "source": "pku-saferlhf"}]
ARENA_CSV = (
    "id,model_a,model_b,prompt,response_a,response_b,winner_model_a,winner_model_b,winner_tie\n"
    '1,x,y,"[""Explain, please""]","[""A says \\""hi\\""""]","[""B""]",1,0,0\n'
    '2,x,y,"[""Q2""]","[""a2""]","[""b2\\nline""]",0,1,0\n'
    '3,x,y,"[""tie""]","[""a""]","[""b""]",0,0,1\n'
    '4,x,y,"[""t1"",""t2""]","[""a1"",""a2""]","[""b1"",""b2""]",1,0,0\n'
    '5,x,y,"[""null answer""]","[null]","[""b""]",0,1,0\n')
ARENA_OUT = [{"prompt": "Explain, please", "chosen": 'A says "hi"', "rejected": "B", "domain": "chat",
              "source": "chatbot-arena"},
             {"prompt": "Q2", "chosen": "b2\nline", "rejected": "a2", "domain": "chat", "source": "chatbot-arena"}]
DAHOAS = [{"prompt": "d?", "chosen": "yes", "rejected": "no"}, {"prompt": "e?", "chosen": "sure", "rejected": "nah"}]
DAHOAS_OUT = [dict(r, domain="chat", source="dahoas-synthetic") for r in DAHOAS]


def _ans(score, text):
    return {"answer_id": score, "author": "u", "author_id": 1, "author_profile": "p", "pm_score": score,
            "selected": False, "text": text}


SE1 = [{"qid": 1, "question": "<p>Q1</p>", "answers": [_ans(3, "<p>mid</p>"), _ans(1, "<p>low</p>"),
                                                       _ans(5, "<p>top</p>"), _ans(1, "<p>low2</p>")],
        "date": "d", "metadata": ["m"]},
       {"qid": 2, "question": "<p>Q2</p>", "answers": [_ans(2, "a"), _ans(2, "b")], "date": "d", "metadata": []},
       {"qid": 3, "question": "<p>Q3</p>", "answers": [_ans(4, "only")], "date": "d", "metadata": []}]
SE2 = [{"qid": 9, "question": "<b>Q9</b>", "answers": [_ans(0, "zero"), _ans(2, "two")], "date": "d", "metadata": []}]
SE_OUT = [{"prompt": "<p>Q1</p>", "chosen": "<p>top</p>", "rejected": "<p>low</p>", "domain": "reasoning",
           "source": "stack-exchange"},
          {"prompt": "<b>Q9</b>", "chosen": "two", "rejected": "zero", "domain": "reasoning", "source": "stack-exchange"}]


def _rmb(conv, chosen, reject):
    return {"pair_uid": "1", "conversation_input": [dict(t, language="English") for t in conv],
            "chosen": {"llm_name": "a", "answer": chosen}, "reject": {"llm_name": "b", "answer": reject}}


RMB_A = [_rmb([{"role": "user", "content": " Tell me \n"}], "\nSure.", " No."),
         _rmb([{"role": "user", "content": "hi "}, {"role": "assistant", "content": "hello"},
               {"role": "user", "content": "more"}], "ok", "nope")]
RMB_B = [_rmb([{"role": "user", "content": "déjà vu"}], "oui", "non")]
RMB_OUT = [{"prompt": " Tell me \n", "chosen": "\nSure.", "rejected": " No.", "domain": "chat",
            "source": "rmb/Helpfulness/Chat/Casual Conversation"},
           {"prompt": "User: hi \n\nAssistant: hello\n\nUser: more", "chosen": "ok", "rejected": "nope",
            "domain": "chat", "source": "rmb/Helpfulness/Chat/Casual Conversation"},
           {"prompt": "déjà vu", "chosen": "oui", "rejected": "non", "domain": "chat",
            "source": "rmb/Helpfulness/Rewrite/Tone Adjustment"}]

RMB_FILES = {"RMB_dataset/Pairwise_set/Helpfulness/Chat/Casual Conversation.json": json.dumps(RMB_A).encode(),
             "RMB_dataset/Pairwise_set/Helpfulness/Rewrite/Tone Adjustment.json": json.dumps(RMB_B).encode()}
UPSTREAM = {  # (host, repo, revision key, path) -> bytes
    ("hf", "org/rb", "rb", "data/filtered-00000-of-00001.parquet"): _parquet(RB),
    ("hf", "org/hh", "hh", "harmless-base/test.jsonl.gz"): gzip.compress(_jsonl(HH_TEST)),
    ("hf", "org/hh", "hh", "harmless-base/train.jsonl.gz"): gzip.compress(_jsonl(HH_TRAIN)),
    ("hf", "org/uf", "uf", "data/train-00000-of-00001.parquet"): _parquet(UF),
    ("hf", "org/pku", "pku", "data/Alpaca3-8B/train.jsonl"): _jsonl(PKU),
    ("hf", "org/arena", "arena", "train.csv"): ARENA_CSV.encode(),
    ("hf", "org/dahoas", "dahoas", "data/train.parquet"): _parquet(DAHOAS),
    ("hf", "org/se", "se", "data/a/train-00000-of-00001.parquet"): _parquet(SE1),
    ("hf", "org/se", "se", "data/b/train-00000-of-00001.parquet"): _parquet(SE2),
    **{("github", "owner/rmb", "rmb", p): b for p, b in RMB_FILES.items()},
}


def _table() -> tuple[Source, ...]:
    def src(file, rows, repo, key, paths, convert, **kw):
        remotes = tuple(Remote(p, _sha(UPSTREAM[(kw.get("host", "hf"), repo, key, p)])) for p in paths)
        return Source(file, rows, kw.pop("host", "hf"), repo, REV[key], remotes, convert, f"licence-{key}", **kw)
    return (
        src("rewardbench/filtered.jsonl", 2, "org/rb", "rb", ["data/filtered-00000-of-00001.parquet"], S.rewardbench,
            group="rewardbench", sample=False),
        src("train/hh-test.jsonl.gz", 3, "org/hh", "hh", ["harmless-base/test.jsonl.gz"], S.hh, sample=False, copy=True),
        src("train/hh-sample.jsonl", 3, "org/hh", "hh", ["harmless-base/train.jsonl.gz"], S.hh),
        src("train/uf.jsonl", 3, "org/uf", "uf", ["data/train-00000-of-00001.parquet"], S.ultrafeedback),
        src("train/pku.jsonl", 2, "org/pku", "pku", ["data/Alpaca3-8B/train.jsonl"], S.pku),
        src("train/arena.jsonl", 2, "org/arena", "arena", ["train.csv"], S.arena),
        src("train/dahoas.jsonl", 2, "org/dahoas", "dahoas", ["data/train.parquet"], S.dahoas),
        src("train/se.jsonl", 2, "org/se", "se", ["data/a/train-00000-of-00001.parquet",
                                                 "data/b/train-00000-of-00001.parquet"], S.stack_exchange),
        src("train/rmb-chat.jsonl.gz", 3, "owner/rmb", "rmb", list(RMB_FILES), S.rmb("chat"), host="github",
            sample=False),
    )


HH_PICK = sorted(random.Random(SEED).sample(range(5), 3))   # the documented rule: seeded sample, upstream order
EXPECTED = {
    "rewardbench/filtered.jsonl": RB,
    "train/hh-test.jsonl.gz": HH_TEST,
    "train/hh-sample.jsonl": [HH_TRAIN[i] for i in HH_PICK],
    "train/uf.jsonl": UF_OUT, "train/pku.jsonl": PKU_OUT, "train/arena.jsonl": ARENA_OUT,
    "train/dahoas.jsonl": DAHOAS_OUT, "train/se.jsonl": SE_OUT, "train/rmb-chat.jsonl.gz": RMB_OUT,
}


@pytest.fixture
def hub(tmp_path, monkeypatch):
    server = HubServer()
    for (host, repo, key, path), data in UPSTREAM.items():
        (server.add_github if host == "github" else server.add_hub)(repo, REV[key], path, data)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("TINYRM_CACHE", str(tmp_path / "tinyrm-cache"))
    monkeypatch.setenv("TINYRM_GITHUB_RAW", server.url + "/gh")
    yield server
    server.close()


def _read(path: Path) -> list[dict]:
    raw = path.read_bytes()
    text = (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode()
    return [json.loads(line) for line in text.splitlines()]


def test_complete_fetch_matches_hand_written_rows_and_manifest(hub, tmp_path):
    out = tmp_path / "data"
    fetch(out, sources=_table(), progress=False)
    for file, rows in EXPECTED.items():
        assert _read(out / file) == rows, file
    assert (out / "train/hh-test.jsonl.gz").read_bytes() == UPSTREAM[("hf", "org/hh", "hh", "harmless-base/test.jsonl.gz")]
    assert (out / "train/pku.jsonl").read_bytes() == _jsonl(PKU_OUT)            # one JSON object per line, UTF-8
    assert (out / "train/rmb-chat.jsonl.gz").read_bytes()[4:8] == b"\0\0\0\0"   # gzip mtime 0: reproducible bytes
    manifest = json.loads((out / "MANIFEST.json").read_text())["files"]
    by_key = {(h, r, k, p): d for (h, r, k, p), d in UPSTREAM.items()}
    assert [e["file"] for e in manifest] == sorted(EXPECTED)
    for e, s in zip(manifest, sorted(_table(), key=lambda s: s.file)):
        assert e == {"file": s.file, "rows": len(EXPECTED[s.file]), "sha256": _sha((out / s.file).read_bytes()),
                     "source": (f"https://github.com/{s.repo}" if s.host == "github" else f"hf://datasets/{s.repo}"),
                     "revision": s.revision, "licence": s.licence,
                     "upstream": [{"path": r.path, "sha256": _sha(by_key[(s.host, s.repo, next(k for k, v in REV.items()
                                                                              if v == s.revision), r.path)])}
                                  for r in s.remotes]}
    again = tmp_path / "again"          # a second run from the caches writes identical bytes
    fetch(again, sources=_table(), progress=False)
    for file in EXPECTED:
        assert (again / file).read_bytes() == (out / file).read_bytes(), file


def test_interrupted_transfers_resume_with_a_range_request(hub, tmp_path, monkeypatch):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 256)   # resume point: last whole chunk
    big = [{"prompt": f"p{i}", "chosen": "c" * 50 + str(i), "rejected": "r" * 50 + str(i)} for i in range(200)]
    hub.add_hub("org/dahoas", REV["dahoas"], "data/big.parquet", _parquet(big))
    gh = "RMB_dataset/Pairwise_set/Helpfulness/Chat/Casual Conversation.json"
    hub.drop_once |= {f"/datasets/org/dahoas/resolve/{REV['dahoas']}/data/big.parquet", f"/gh/owner/rmb/{REV['rmb']}/{gh}"}
    table = [replace(_table()[6], remotes=(Remote("data/big.parquet"),), rows=200), _table()[8]]
    out = tmp_path / "data"
    fetch(out, sources=table, progress=False)
    assert _read(out / "train/dahoas.jsonl") == [dict(r, domain="chat", source="dahoas-synthetic") for r in big]
    assert _read(out / "train/rmb-chat.jsonl.gz") == RMB_OUT
    ranges = {p.split("/")[-1]: r for m, p, r in hub.log if m == "GET" and r}
    assert re.fullmatch(r"bytes=[1-9]\d*-", ranges["big.parquet"])
    assert re.fullmatch(r"bytes=[1-9]\d*-", ranges["Casual Conversation.json"])
    assert not hub.drop_once                     # both drops happened


def test_a_part_file_left_by_an_earlier_run_is_resumed(hub, tmp_path):
    gh = "RMB_dataset/Pairwise_set/Helpfulness/Chat/Casual Conversation.json"
    part = tmp_path / "tinyrm-cache" / "github" / "owner/rmb" / REV["rmb"] / (gh + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(RMB_FILES[gh][:100])
    fetch(tmp_path / "data", sources=[_table()[8]], progress=False)
    assert _read(tmp_path / "data/train/rmb-chat.jsonl.gz") == RMB_OUT and not part.exists()
    assert ("GET", f"/gh/owner/rmb/{REV['rmb']}/{gh}", "bytes=100-") in hub.log


def test_checksum_mismatch_names_the_url_and_writes_nothing(hub, tmp_path):
    gh = "RMB_dataset/Pairwise_set/Helpfulness/Rewrite/Tone Adjustment.json"
    hub.add_github("owner/rmb", REV["rmb"], gh, json.dumps(RMB_B + RMB_B).encode())   # not the pinned bytes
    with pytest.raises(FetchError, match=r"Tone%20Adjustment\.json: sha256 [0-9a-f]{64} is not the pinned .*"
                                         r"for train/rmb-chat\.jsonl\.gz.*delete .*Tone Adjustment\.json"):
        fetch(tmp_path / "data", sources=[_table()[8]], progress=False)
    assert not (tmp_path / "data/train/rmb-chat.jsonl.gz").exists() and not (tmp_path / "data/MANIFEST.json").exists()


def test_row_count_mismatch_names_the_file(hub, tmp_path):
    short = replace(_table()[4], rows=3, sample=False)            # 2 usable PKU rows, 3 promised
    with pytest.raises(FetchError, match=r"train/pku\.jsonl: 2 rows from org/pku@[0-9a-f]{40}, expected 3"):
        fetch(tmp_path / "data", sources=[short], progress=False)
    assert not list((tmp_path / "data/train").iterdir())          # no output, no temporary left behind
    sampled = replace(_table()[4], rows=3)
    with pytest.raises(FetchError, match=r"train/pku\.jsonl: org/pku@[0-9a-f]{40} has 2 usable rows, 3 needed"):
        fetch(tmp_path / "data", sources=[sampled], progress=False)


def test_rewardbench_subset_counts_are_checked(hub, tmp_path):
    rb = replace(_table()[0], check=S.check_rewardbench)
    with pytest.raises(FetchError, match=r"rewardbench/filtered\.jsonl: not the official filtered split \(2 rows"):
        fetch(tmp_path / "data", sources=[rb], progress=False)


def test_cli_error_is_one_line_and_exit_2(hub, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(datasets, "SOURCES", (replace(_table()[4], rows=3, sample=False),))
    assert cli.main(["data", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.splitlines()                  # (tqdm's bar precedes it on stderr)
    assert [e for e in err if "error" in e] == err[-1:] and err[-1].startswith("error: train/pku.jsonl: 2 rows from")
    monkeypatch.setattr(datasets, "SOURCES", _table())
    assert cli.main(["data", "--only", "rewardbench", "--out", str(tmp_path / "d")]) == 0
    assert [e["file"] for e in json.loads((tmp_path / "d/MANIFEST.json").read_text())["files"]] == \
        ["rewardbench/filtered.jsonl"]
    assert not any("org/hh" in p for _, p, _ in hub.log)          # --only fetched nothing else


def test_missing_pyarrow_is_a_clear_error_before_any_download(hub, tmp_path, monkeypatch):
    real = datasets.importlib.util.find_spec
    monkeypatch.setattr(datasets.importlib.util, "find_spec", lambda n, *a: None if n == "pyarrow" else real(n, *a))
    with pytest.raises(FetchError, match=r"rewardbench/filtered\.jsonl: .*pip install 'tinyrm\[data\]'"):
        fetch(tmp_path / "data", sources=_table(), progress=False)
    assert hub.log == []
    fetch(tmp_path / "data", only="pku,rmb-chat", sources=_table(), progress=False)   # no parquet: fine


def test_only_selects_groups_files_and_stems():
    assert [s.file for s in select("rewardbench")] == ["rewardbench/filtered.jsonl"]
    assert [s.file for s in select("rmb-chat,ultrafeedback-eval.jsonl")] == \
        ["train/ultrafeedback-eval.jsonl", "train/rmb-chat.jsonl.gz"]
    assert len(select("train")) == len(SOURCES) - 1 and len(select(None)) == len(SOURCES)
    with pytest.raises(FetchError, match=r"--only nope: no such data file or group; choose from .*rewardbench"):
        select("nope")


def test_source_table_matches_the_data_readme():
    """One entry per shipped file, with the README's row count; every pin is a full commit / sha256."""
    readme = data_root() / "README.md"
    if not readme.is_file():
        pytest.skip(f"{readme} not present on this machine")
    listed = dict(re.findall(r"^\| `([^`]+)` \| (\d+) \|", readme.read_text(), re.M))
    assert {s.file: s.rows for s in SOURCES} == {f: int(n) for f, n in listed.items()}
    assert SOURCES[0].check is S.check_rewardbench and not SOURCES[0].sample
    for s in SOURCES:
        assert re.fullmatch(r"[0-9a-f]{40}", s.revision), s.file
        assert all(r.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", r.sha256) for r in s.remotes), s.file


def test_pinned_copy_is_the_shipped_file():
    """The harmless-base test split ships byte for byte: its pinned upstream sha256 is the shipped file's."""
    shipped = data_root() / "train" / "hh-rlhf-harmless-base-test.jsonl.gz"
    if not shipped.is_file():
        pytest.skip(f"{shipped} not present on this machine")
    (src,) = [s for s in SOURCES if s.copy]
    assert src.remotes[0].sha256 == _sha(shipped.read_bytes())
