"""tinyrm export: the merged transformers folder and the PEFT adapter give tinyrm's own rewards, with
transformers and peft as the oracles, on real RewardBench rows; bad input is one clear error.

Two runs are made cheaply, as the trainer would leave them (checkpoint.save_checkpoint as best/ with the
trainer's meta keys), with random adapters instead of training: the default recipe's MiniLM (pointwise,
DoRA on query/key/value/dense, rank 16, alpha 32, two layers frozen, the head tinyrm built trained) and
a random ModernBERT (pairwise, the decoder adapted too, norms trained)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import shared_path, write_modernbert, write_tiny_bert
from test_dora import randomize_adapters

import tinyrm
from tinyrm.calibrate import length_term, slopes_text
from tinyrm.checkpoint import save_checkpoint
from tinyrm.dora import MODERNBERT_TARGETS, add_dora, freeze_layers
from tinyrm.errors import CheckpointError
from tinyrm.export import export_model, export_peft
from tinyrm.prompts import Cloze
from tinyrm.recipe import TrainConfig
from tinyrm.scorer import RewardModel
from tinyrm.tokens import Specials, answer_token_ids, load_tokenizer

# float32 logits of size ~10 computed in a different summation order: ~1e-6 each; 1e-4 is the brief's bound
TOL = 1e-4
SLOPES = {"*": 0.31, "none": 0.31}


def _rows(n=4):
    """A handful of RewardBench rows from different sections (chat, safety, code, math)."""
    lines = shared_path("rewardbench/filtered.jsonl").read_text().splitlines()
    return [json.loads(lines[i]) for i in range(0, len(lines), len(lines) // n)][:n]


def _perturb(enc, seed):
    """Stand-in for training: random adapters, and every trainable base weight moved."""
    randomize_adapters(enc, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for n, p in enc.named_parameters():
            if p.requires_grad and not any(t in n for t in ("lora_", "magnitude")):
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def _save_run(run, enc, base, mode, files=None, max_len=512, truncate="end"):
    cfg = TrainConfig(model=str(base), mode=mode, prefix="domain", max_len=max_len, truncate=truncate)
    words = ["0", "1"] if mode == "pairwise" else ["yes", "no"]
    save_checkpoint(run / "best", enc, {"base": str(base), "train": cfg.to_dict(), "answer_words": words,
                                        "step": 3}, files=files)
    return run


@pytest.fixture(scope="module")
def minilm_run(tmp_path_factory, minilm_path):
    enc = tinyrm.load_encoder(minilm_path)
    add_dora(enc, 16, 32, targets=["query", "key", "value", "dense"])
    freeze_layers(enc, 2)
    assert enc.built_head                       # as train.prepare_model: the built head trains
    for p in [*enc.head_modules()[0].parameters(), enc.decoder_module().bias]:
        p.requires_grad_(True)
    _perturb(enc, 0)
    run = tmp_path_factory.mktemp("minilm-run")
    return _save_run(run, enc, minilm_path, "pointwise", {"length.json": slopes_text(SLOPES)})


@pytest.fixture(scope="module")
def modernbert_run(tmp_path_factory, minilm_path):
    base = tmp_path_factory.mktemp("modernbert")
    write_modernbert(base, minilm_path, seed=5)
    enc = tinyrm.load_encoder(base)
    add_dora(enc, 4, 8, targets=MODERNBERT_TARGETS)
    freeze_layers(enc, 2, train_base=True)
    _perturb(enc, 1)
    return _save_run(tmp_path_factory.mktemp("modernbert-run"), enc, base, "pairwise")


def _export_cloze(folder) -> Cloze:
    """The prompt builder an outside user makes from the export alone: its tokenizer.json and tinyrm.json."""
    info = json.loads((folder / "tinyrm.json").read_text())
    tok = load_tokenizer(folder)
    words = tuple(info["answer_words"])
    return Cloze(tok, info["mode"], info["prefix"], info["max_len"], Specials.from_tokenizer(tok), words,
                 answer_token_ids(tok, words), info["truncate"])


def _hf_z(model, examples, ids, bert: bool) -> torch.Tensor:
    """[N] float64: logit(word 0) - logit(word 1) at each example's mask, from a transformers model fed a
    right-padded batch."""
    L = max(len(e.input_ids) for e in examples)
    ids_, att, tt = (torch.zeros(len(examples), L, dtype=torch.long) for _ in range(3))
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids_[i, :n], att[i, :n], tt[i, :n] = torch.tensor(e.input_ids), 1, torch.tensor(e.token_type_ids)
    kw = {"token_type_ids": tt} if bert else {}
    with torch.no_grad():
        lg = model(input_ids=ids_, attention_mask=att, **kw).logits
    at = lg[torch.arange(len(examples)), torch.tensor([e.mask_pos for e in examples])][:, list(ids)].double()
    return at[:, 0] - at[:, 1]


_SCORES: dict = {}


def _tinyrm_scores(run, prompts, resps) -> torch.Tensor:
    """RewardModel.score of a run, computed once per (run, inputs): the hf and peft tests share it."""
    key = (str(run), prompts, resps)
    if key not in _SCORES:
        _SCORES[key] = torch.tensor(RewardModel.load(run).score(list(prompts), list(resps)), dtype=torch.float64)
    return _SCORES[key]


def _pointwise_check(model, folder, run, rows):
    """The exported model's reward, length-corrected with tinyrm.json's slopes, vs RewardModel.score."""
    info, cz = json.loads((folder / "tinyrm.json").read_text()), _export_cloze(folder)
    prompts, resps = [r["prompt"] for r in rows] * 2, [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    exs = [cz.pointwise(q, a) for q, a in zip(prompts, resps)]
    got = _hf_z(model, exs, cz.answer_ids, bert=True)
    if info["length_slopes"]:
        got = got - length_term(info["length_slopes"], resps)
    want = _tinyrm_scores(run, tuple(prompts), tuple(resps))
    assert want.abs().max() > 0.1                  # far from zero: a 1e-4 agreement means something
    return (got - want).abs().max().item()


def test_hf_minilm_loads_in_transformers_and_scores_as_tinyrm(tmp_path, minilm_run):
    from transformers import AutoModelForMaskedLM
    out = export_model(minilm_run, tmp_path / "hf")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                       "tinyrm.json", "tokenizer.json"]
    info = json.loads((out / "tinyrm.json").read_text())
    assert info == {"format": "tinyrm-model", "version": 1, "mode": "pointwise", "prefix": "domain",
                    "max_len": 512, "truncate": "end", "answer_words": ["yes", "no"], "length_slopes": SLOPES,
                    "relevance": None,
                    "base": json.loads((minilm_run / "best" / "adapter.json").read_text())["base"]}
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["BertForMaskedLM"] and cfg["tie_word_embeddings"] is True
    keys = set(load_file(out / "model.safetensors"))
    assert {"cls.predictions.transform.dense.weight", "cls.predictions.bias"} <= keys
    assert not any("lora" in k or "magnitude" in k for k in keys)
    model, load = AutoModelForMaskedLM.from_pretrained(out, output_loading_info=True)
    assert type(model).__name__ == "BertForMaskedLM"
    assert not any(load[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), load
    err = _pointwise_check(model.eval(), out, minilm_run, _rows())
    print(f"hf MiniLM max |delta| = {err:.2e}")
    assert err < TOL
    # tinyrm itself reads the export (tinyrm.json) and scores as the run does, length correction included
    rows = _rows(3)
    args = ([r["prompt"] for r in rows], [r["chosen"] for r in rows])
    mine, ref = RewardModel.load(out), RewardModel.load(minilm_run)
    assert mine.length_slopes == SLOPES
    assert max(abs(a - b) for a, b in zip(mine.score(*args), ref.score(*args))) < TOL


def test_middle_truncation_travels_with_the_run_and_its_export(tmp_path, minilm_path):
    """A run trained with truncate = "middle" is scored with it, from its checkpoint and from its export; the
    export's README rule, applied by hand to the tokenizer's ids and fed to transformers, gives its rewards."""
    from transformers import AutoModelForMaskedLM
    enc = tinyrm.load_encoder(minilm_path)
    add_dora(enc, 16, 32, targets=["query", "key", "value", "dense"])
    _perturb(enc, 4)
    run = _save_run(tmp_path / "run", enc, minilm_path, "pointwise", max_len=64, truncate="middle")
    prompts = ["What is the answer?", "Name it."]
    resps = ["It begins plainly. " + "Then it rambles on. " * 30 + "So the answer is seven.", "Short."]
    mid, end = RewardModel.load(run), RewardModel.load(run, truncate="end")
    assert (mid.cloze.truncate, end.cloze.truncate) == ("middle", "end")
    got = mid.score(prompts, resps)
    assert abs(got[0] - end.score(prompts, resps)[0]) > 1e-3 and abs(got[1] - end.score(prompts, resps)[1]) < TOL
    out = export_model(run, tmp_path / "hf")
    info = json.loads((out / "tinyrm.json").read_text())
    assert info["truncate"] == "middle" and "from its middle" in (out / "README.md").read_text()
    assert max(abs(a - b) for a, b in zip(RewardModel.load(out).score(prompts, resps), got)) < TOL
    # by hand: budget = 64 - (4 specials + 9 head + 2 + 7 tail) = 42; prompt 5 fits (floor 10 > 5),
    # the response's tokens -> 37: the first 37 - 12 - 3 = 22, "...", the last 37 // 3 = 12
    tok = load_tokenizer(out)
    def ids(t):
        return tok.encode(t, add_special_tokens=False).ids
    q, r = ids(" " + prompts[0]), ids(" " + resps[0])
    head = ids("Judge the response to the question. Question:")
    assert len(head) == 9 and len(q) == 5 and len(ids(" ...")) == 3 and len(r) > 100
    body = [101] + head + q + ids(" Response:") + r[:22] + ids(" ...") + r[-12:] + [102]
    tail = ids("Is the response good? Answer:") + [103, 102]
    x = torch.tensor([body + tail])
    assert x.shape[1] == 64 and tok.decode(r[-12:]).endswith("answer is seven.")
    model = AutoModelForMaskedLM.from_pretrained(out).eval()
    with torch.no_grad():
        lg = model(input_ids=x, token_type_ids=torch.tensor([[0] * len(body) + [1] * len(tail)])).logits[0, -2]
    yes, no = answer_token_ids(tok, ("yes", "no"))
    assert abs((lg[yes] - lg[no]).item() - got[0]) < TOL


def test_hf_bert_with_adapted_decoder_is_untied(tmp_path, minilm_path):
    """BERT whose decoder is adapted: its own matrix, and both bias names (transformers ties neither then)."""
    from transformers import AutoModelForMaskedLM
    base = write_tiny_bert(tmp_path / "bert", minilm_path, seed=2)
    enc = tinyrm.load_encoder(base)
    add_dora(enc, 4, 8, targets=["query", "value", "dense", "decoder"])
    freeze_layers(enc, 1, train_base=True)
    _perturb(enc, 3)
    run = _save_run(tmp_path / "run", enc, base, "pointwise", max_len=128)
    out = export_model(run, tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    assert {"cls.predictions.bias", "cls.predictions.decoder.bias", "cls.predictions.decoder.weight"} <= \
        set(load_file(out / "model.safetensors"))
    model, load = AutoModelForMaskedLM.from_pretrained(out, output_loading_info=True)
    assert not any(load[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), load
    assert _pointwise_check(model.eval(), out, run, _rows(3)) < TOL


def test_tinyrm_reads_an_untied_export(tmp_path, modernbert_run):
    out = export_model(modernbert_run, tmp_path / "hf")
    rows = _rows(2)
    args = ([r["prompt"] for r in rows], [r["chosen"] for r in rows], [r["rejected"] for r in rows])
    mine, ref = RewardModel.load(out), RewardModel.load(modernbert_run)
    assert (mine.compare_logits(*args) - ref.compare_logits(*args)).abs().max().item() < TOL


def _pairwise_check(model, folder, run, rows):
    """Both orders of every pair: the exported model's logit vs RewardModel.pairwise_logits."""
    cz, rm = _export_cloze(folder), RewardModel.load(run)
    exs = [e for r in rows for e in (cz.pairwise(r["prompt"], r["chosen"], r["rejected"]),
                                     cz.pairwise(r["prompt"], r["rejected"], r["chosen"]))]
    got = _hf_z(model, exs, cz.answer_ids, bert=False)
    z_ab, z_ba = rm.pairwise_logits([r["prompt"] for r in rows], [r["chosen"] for r in rows],
                                    [r["rejected"] for r in rows])
    want = torch.stack([z_ab, z_ba], 1).flatten().double()
    assert want.abs().max() > 0.5
    return (got - want).abs().max().item()


def test_hf_modernbert_untied_decoder(tmp_path, modernbert_run):
    from transformers import AutoModelForMaskedLM
    out = export_model(modernbert_run, tmp_path / "hf", "hf")
    info = json.loads((out / "tinyrm.json").read_text())
    assert info["mode"] == "pairwise" and info["answer_words"] == ["0", "1"] and info["length_slopes"] is None
    cfg = json.loads((out / "config.json").read_text())
    # the adapted decoder differs from the embeddings: it must go out as its own matrix
    assert cfg["architectures"] == ["ModernBertForMaskedLM"] and cfg["tie_word_embeddings"] is False
    t = load_file(out / "model.safetensors")
    assert not torch.equal(t["decoder.weight"], t["model.embeddings.tok_embeddings.weight"])
    model, load = AutoModelForMaskedLM.from_pretrained(out, output_loading_info=True, attn_implementation="sdpa")
    assert not any(load[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), load
    err = _pairwise_check(model.eval(), out, modernbert_run, _rows())
    print(f"hf ModernBERT max |delta| = {err:.2e}")
    assert err < TOL


def test_peft_minilm_default_run(tmp_path, minilm_run, minilm_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForMaskedLM
    out = export_model(minilm_run, tmp_path / "peft", "peft")
    cfg = json.loads((out / "adapter_config.json").read_text())
    info = json.loads((out / "tinyrm.json").read_text())
    assert info["format"] == "tinyrm-peft" and cfg["base_model_name_or_path"] == info["base"]
    # the head's transform was adapted AND its base trained: merged, as a saved module, not a LoRA target
    assert cfg["modules_to_save"] == ["cls.predictions.transform"] and cfg["bias"] == "all"
    assert "cls.predictions.transform.dense" not in cfg["target_modules"] and len(cfg["target_modules"]) == 36
    base = AutoModelForMaskedLM.from_pretrained(minilm_path)       # its head is random: the adapter fixes it
    model = PeftModel.from_pretrained(base, out).eval()
    err = _pointwise_check(model, out, minilm_run, _rows())
    print(f"peft MiniLM max |delta| = {err:.2e}")
    assert err < TOL
    # every key we write is one peft itself writes for this configuration
    own = get_peft_model(AutoModelForMaskedLM.from_pretrained(minilm_path),
                         LoraConfig(r=16, lora_alpha=32, target_modules=cfg["target_modules"], use_dora=True,
                                    bias="all", modules_to_save=cfg["modules_to_save"]))
    own.save_pretrained(tmp_path / "own")
    assert set(load_file(out / "adapter_model.safetensors")) <= set(load_file(tmp_path / "own" / "adapter_model.safetensors"))


def test_peft_modernbert_run(tmp_path, modernbert_run):
    from peft import PeftModel
    from transformers import AutoModelForMaskedLM
    out = export_model(modernbert_run, tmp_path / "peft", "peft")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["bias"] == "none" and cfg["modules_to_save"]     # the trained norms
    base = AutoModelForMaskedLM.from_pretrained(cfg["base_model_name_or_path"], attn_implementation="sdpa")
    model = PeftModel.from_pretrained(base, out).eval()
    err = _pairwise_check(model, out, modernbert_run, _rows())
    print(f"peft ModernBERT max |delta| = {err:.2e}")
    assert err < TOL


# ---- export_peft on a model straight from training (requires_grad says what was trained) ----
def _info(base):
    return {"format": "tinyrm-model", "version": 1, "mode": "pairwise", "prefix": "domain", "max_len": 512,
            "answer_words": ["0", "1"], "length_slopes": None, "base": str(base)}


@pytest.mark.parametrize("train_base", [False, True])
def test_export_peft_in_memory_keys_are_peft_own(tmp_path, tiny_modernbert, train_base):
    from conftest import padded_batch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import ModernBertForMaskedLM
    folder, _ = tiny_modernbert
    enc = tinyrm.load_encoder(folder)
    add_dora(enc, 4, 8, targets=MODERNBERT_TARGETS)
    freeze_layers(enc, 2, train_base=train_base)
    _perturb(enc, 2)
    out = export_peft(enc, tmp_path / "peft", _info(folder))
    ids, mask = padded_batch([9, 6, 12])
    hf = ModernBertForMaskedLM.from_pretrained(folder, attn_implementation="sdpa").eval()
    pm = PeftModel.from_pretrained(hf, out).eval().double()      # float64: the exact-maths reference
    enc.eval()
    with torch.no_grad():
        ref, got = pm(input_ids=ids, attention_mask=mask).logits, enc(ids, mask)
    m = mask.bool()
    assert (got[m].double() - ref[m]).abs().max().item() < TOL
    # our key names are exactly the ones peft itself writes for the same configuration
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert (cfg["modules_to_save"] is not None) == train_base and cfg["bias"] == "none"
    own = get_peft_model(ModernBertForMaskedLM.from_pretrained(folder, attn_implementation="sdpa"),
                         LoraConfig(r=4, lora_alpha=8, target_modules=cfg["target_modules"], use_dora=True,
                                    modules_to_save=cfg["modules_to_save"]))
    own.save_pretrained(tmp_path / "own")
    assert set(load_file(out / "adapter_model.safetensors")) == set(load_file(tmp_path / "own" / "adapter_model.safetensors"))


def test_export_peft_refuses_tied_trainable(tmp_path, tiny_modernbert):
    folder, _ = tiny_modernbert
    enc = tinyrm.load_encoder(folder)
    add_dora(enc, 2, 4, targets=["Wqkv"])
    freeze_layers(enc, 0, train_base=True)          # the tied embedding/decoder matrix would train
    with pytest.raises(CheckpointError, match="tok_embeddings.weight' is tied"):
        export_peft(enc, tmp_path / "peft", _info(folder))
    assert not (tmp_path / "peft").exists()


# ---- errors and the command line ----
def test_errors_name_the_folder(tmp_path, modernbert_run):
    with pytest.raises(CheckpointError, match=r"nothing: not a folder"):
        export_model(tmp_path / "nothing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"empty: no adapter\.json"):
        export_model(tmp_path / "empty", tmp_path / "out")
    # never over a folder that is not an earlier export (the run itself: its files would be replaced)
    with pytest.raises(CheckpointError, match=r"exists and is not an earlier export"):
        export_model(modernbert_run, modernbert_run)
    meta = modernbert_run / "best" / "adapter.json"
    bad = tmp_path / "run" / "best"
    bad.mkdir(parents=True)
    for f in (modernbert_run / "best").iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    info = json.loads(meta.read_text())
    info["train"]["model"] = info["base"] = str(tmp_path / "gone")
    (bad / "adapter.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match=r"adapter\.json: base model '.*gone' not found"):
        export_model(tmp_path / "run", tmp_path / "out")


def test_cli_export_and_one_line_errors(tmp_path, modernbert_run, capsys):
    from tinyrm.cli import main
    assert main(["export", "--model", str(modernbert_run), "--out", str(tmp_path / "p"), "--format", "peft"]) == 0
    assert (tmp_path / "p" / "adapter_config.json").is_file() and (tmp_path / "p" / "tinyrm.json").is_file()
    # again into the same export: replaced whole
    assert main(["export", "--model", str(modernbert_run), "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "model.safetensors").is_file() and not (tmp_path / "p" / "adapter_config.json").exists()
    capsys.readouterr()
    assert main(["export", "--model", str(tmp_path / "nothing"), "--out", str(tmp_path / "q")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nothing: not a folder" in err and err.count("\n") == 1
