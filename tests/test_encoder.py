"""Our encoders against transformers: ModernBertForMaskedLM (random checkpoints it writes) and the
real MiniLM-L6 weights under BertModel."""
import json

import pytest
import torch

import tinyrm
from conftest import padded_batch, write_modernbert
from tolerance import encoder_tol  # float32 bounds from the computation (tests/tolerance.py)

SENTENCES = ["The quick brown fox jumps over the lazy dog.",
             "Reward models score a response to a prompt; smaller ones are cheaper to call at test time.",
             "Hi!", "Which response is safer? Choice 0: no. Choice 1: yes."]


def test_modernbert_logits_match_transformers(tiny_modernbert):
    folder, ref = tiny_modernbert
    enc = tinyrm.load_encoder(folder)
    # the window (8) is shorter than the sequences, and layers 0 and 3 are global
    assert [enc.config.is_global(i) for i in range(5)] == [True, False, False, True, False]
    ids, mask = padded_batch([23, 11, 17, 4])
    import copy
    with torch.no_grad():
        ours = enc(ids, mask)
        theirs = copy.deepcopy(ref).double()(input_ids=ids, attention_mask=mask).logits   # float64 reference
    assert theirs.abs().max() > 1.0  # not a trivially small comparison
    m = mask.bool()
    torch.testing.assert_close(ours[m].double(), theirs[m], **encoder_tol(enc, theirs[m]))


def test_positions_and_vocab_subset(tiny_modernbert):
    folder, ref = tiny_modernbert
    enc = tinyrm.load_encoder(folder)
    ids, mask = padded_batch([9, 14, 6], seed=1)
    pos = torch.tensor([3, 13, 0])
    with torch.no_grad():
        full = enc(ids, mask)
        at = enc(ids, mask, positions=pos)                     # [B, V]
        two = enc(ids, mask, positions=pos, vocab_ids=torch.tensor([15, 16]))
        k = enc(ids, mask, positions=torch.tensor([[0, 1], [2, 13], [5, 4]]))  # [B, K, V]
    tol = encoder_tol(enc, full, sides=2, layers=1)   # the last layer and head run on other row counts
    torch.testing.assert_close(at, full[torch.arange(3), pos], **tol)
    torch.testing.assert_close(two, full[torch.arange(3), pos][:, [15, 16]], **tol)
    torch.testing.assert_close(k[1, 1], full[1, 13], **tol)
    with pytest.raises(ValueError, match="padding"):
        enc(ids, mask, positions=torch.tensor([3, 13, 8]))


def test_padding_invariance(tiny_modernbert):
    enc = tinyrm.load_encoder(tiny_modernbert[0])
    ids, mask = padded_batch([30, 12, 7], seed=2)
    with torch.no_grad():
        batched = enc.encode(ids, mask)
        alone = enc.encode(ids[1:2, :12], mask[1:2, :12])
    torch.testing.assert_close(batched[1, :12], alone[0], **encoder_tol(enc, alone, sides=2))  # other shapes
    assert batched[1, 12:].abs().max() == 0  # padding stays empty


def test_legacy_config_dialect(tmp_path, minilm_path):
    # the hub's released configs use global_rope_theta / local_rope_theta, not rope_parameters
    ref = write_modernbert(tmp_path, minilm_path, seed=3, local_attention=6)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.pop("rope_parameters"), cfg.pop("layer_types")
    cfg.update(global_rope_theta=160000.0, local_rope_theta=10000.0)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    enc = tinyrm.load_encoder(tmp_path)
    assert enc.config.global_theta == 160000.0 and enc.config.local_window == 6
    ids, mask = padded_batch([15, 9], seed=3)
    with torch.no_grad():
        theirs = ref.double()(input_ids=ids, attention_mask=mask).logits[mask.bool()]      # float64 reference
        torch.testing.assert_close(enc(ids, mask)[mask.bool()].double(), theirs, **encoder_tol(enc, theirs))


def test_modernbert_base_shape_parity(tmp_path, minilm_path):
    ref = write_modernbert(tmp_path, minilm_path, seed=4, hidden_size=768, num_hidden_layers=22,
                           num_attention_heads=12, intermediate_size=1152, local_attention=128,
                           initializer_range=0.02)
    enc = tinyrm.load_encoder(tmp_path)
    ids, mask = padded_batch([150, 90], seed=4)  # longer than the 64-token half window
    with torch.no_grad():
        ours, theirs = enc(ids, mask), ref.double()(input_ids=ids, attention_mask=mask).logits   # float64 ref
    torch.testing.assert_close(ours[mask.bool()].double(), theirs[mask.bool()], **encoder_tol(enc, theirs[mask.bool()]))


def _batch(tok, texts):
    encs = tok.encode_batch(texts)
    L = max(len(e.ids) for e in encs)
    ids = torch.tensor([e.ids + [0] * (L - len(e.ids)) for e in encs])
    mask = torch.tensor([[1] * len(e.ids) + [0] * (L - len(e.ids)) for e in encs])
    return ids, mask


def test_minilm_matches_transformers_bert(minilm_path):
    from transformers import AutoTokenizer, BertModel

    enc = tinyrm.load_encoder(minilm_path)
    assert enc.built_head and enc.config.mask_id == 103
    ids, mask = _batch(enc.tokenizer, SENTENCES)
    assert ids.tolist()[0] != ids.tolist()[2]
    ref = BertModel.from_pretrained(minilm_path).eval().double()                  # float64 reference
    with torch.no_grad():
        ours, theirs = enc.encode(ids, mask), ref(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(ours[mask.bool()].double(), theirs[mask.bool()], **encoder_tol(enc, theirs[mask.bool()]))
    assert AutoTokenizer.from_pretrained(minilm_path)(SENTENCES)["input_ids"] == [e.ids for e in
                                                                                  enc.tokenizer.encode_batch(SENTENCES)]


def test_bert_mlm_head_matches_transformers(tmp_path, minilm_path):
    # a BERT checkpoint *with* an MLM head (bert./cls. prefixes, separate cls.predictions.bias)
    from transformers import BertConfig, BertForMaskedLM
    import shutil

    torch.manual_seed(5)
    ref = BertForMaskedLM(BertConfig(vocab_size=30522, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=80, max_position_embeddings=64)).eval()
    with torch.no_grad():
        ref.cls.predictions.bias.normal_()
    ref.save_pretrained(tmp_path)
    shutil.copy(minilm_path / "tokenizer.json", tmp_path)
    enc = tinyrm.load_encoder(tmp_path)
    assert not enc.built_head
    ids, mask = padded_batch([20, 7], seed=5)
    tt = (torch.arange(20) >= 10).long().expand(2, 20) * mask
    with torch.no_grad():
        ours = enc(ids, mask, token_type_ids=tt)
        theirs = ref.double()(input_ids=ids, attention_mask=mask, token_type_ids=tt).logits   # float64 ref
    torch.testing.assert_close(ours[mask.bool()].double(), theirs[mask.bool()], **encoder_tol(enc, theirs[mask.bool()]))


def test_bert_hidden_dropout_matches_transformers_training(minilm_path):
    """`hidden_dropout` puts BERT's hidden_dropout_prob where transformers does: with one seed, our training
    forward draws the same masks in the same order (one unpadded sequence, so the shapes' element orders
    agree). Both sides run in float64, where the mask draws follow one code path; attention-probability
    dropout is off on the reference, as we do not implement it."""
    from transformers import BertModel

    enc = tinyrm.load_encoder(minilm_path).double()
    enc.set_hidden_dropout(0.1)
    ref = BertModel.from_pretrained(minilm_path, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.0).double()
    ids = torch.tensor([enc.tokenizer.encode(SENTENCES[1]).ids])
    mask = torch.ones_like(ids)
    runs = {}
    for train in (True, False):
        enc.train(train), ref.train(train)
        for seed in (3, 4):
            torch.manual_seed(seed)
            ours = enc.encode(ids, mask).detach()
            torch.manual_seed(seed)
            runs[train, seed] = ours, ref(input_ids=ids, attention_mask=mask).last_hidden_state.detach()
    for (train, seed), (ours, theirs) in runs.items():
        torch.testing.assert_close(ours.view_as(theirs), theirs, **encoder_tol(enc, theirs))
    tol = encoder_tol(enc, runs[True, 3][1])["atol"]
    assert (runs[True, 3][0] - runs[True, 4][0]).abs().max() > 100 * tol        # the masks are drawn ...
    assert (runs[True, 3][0] - runs[False, 3][0]).abs().max() > 100 * tol       # ... in training only
    assert torch.equal(runs[False, 3][0], runs[False, 4][0])


def test_hidden_dropout_is_bert_only(tiny_modernbert):
    enc = tinyrm.load_encoder(tiny_modernbert[0])
    enc.set_hidden_dropout(0.0)
    with pytest.raises(ValueError, match="ModernBert"):
        enc.set_hidden_dropout(0.1)


@pytest.mark.parametrize("arch", ["modernbert", "bert"])
def test_last_layer_at_mask_rows_only(arch, tiny_modernbert, minilm_path):
    """encode_packed(p, rows) == encode_packed(p)[rows]; the tiny ModernBERT's last layer is a local
    (windowed) one, so the row-query band mask is exercised; gradients flow the same way too."""
    from tinyrm.encoder import packed_from_lists

    enc = tinyrm.load_encoder(tiny_modernbert[0] if arch == "modernbert" else minilm_path)
    assert arch == "bert" or not enc.config.is_global(enc.config.num_layers - 1)
    g = torch.Generator().manual_seed(9)
    lens = [21, 21, 9, 30, 5]
    seqs = [torch.randint(1000, 29000, (n,), generator=g).tolist() for n in lens]
    p = packed_from_lists(seqs, [[0] * n for n in lens])
    rows = p.cu_seqlens[:-1] + torch.tensor([20, 3, 8, 25, 0])
    with torch.no_grad():
        whole = enc.encode_packed(p)                   # the last layer runs on other row counts: sides=2
        torch.testing.assert_close(enc.encode_packed(p, rows), whole[rows],
                                   **encoder_tol(enc, whole, sides=2, layers=1))
