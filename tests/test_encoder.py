"""The encoder against transformers' BERT (oracle), the weight-name mapping, heads and config checks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from bertlab.encoder import (
    BertConfig,
    BertEncoder,
    BertForPretraining,
    SequenceClassificationHead,
    TokenClassificationHead,
    encoder_from_hf,
    encoder_to_hf,
    pretraining_from_hf,
    pretraining_heads_to_hf,
    pretraining_loss,
)
from bertlab.errors import BertlabError

SMALL = dict(
    vocab_size=1000,
    hidden_size=64,
    num_layers=2,
    num_heads=4,
    intermediate_size=256,
    max_position_embeddings=64,
)
TOL = 1e-5


def small_config(**overrides) -> BertConfig:
    return BertConfig(**{**SMALL, **overrides})


def make_batch(config: BertConfig, batch: int = 4, seq_len: int = 24, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, config.vocab_size, (batch, seq_len), generator=g)
    lengths = torch.tensor([seq_len, seq_len - 7, 5, seq_len - 1])[:batch]
    attention_mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()
    input_ids = input_ids.masked_fill(attention_mask == 0, config.pad_token_id)
    token_type_ids = (torch.arange(seq_len)[None, :] >= (lengths[:, None] // 2)).long() * attention_mask
    mlm_labels = torch.full((batch, seq_len), -100)
    pick = (torch.rand(batch, seq_len, generator=g) < 0.3) & attention_mask.bool()
    mlm_labels[pick] = input_ids[pick]
    return input_ids, attention_mask, token_type_ids, mlm_labels


def hf_pretraining(config: BertConfig, attn_implementation: str, seed: int = 0):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    hf_config = transformers.BertConfig(**config.to_hf_dict(), attn_implementation=attn_implementation)
    model = transformers.BertForPreTraining(hf_config)
    assert model.config._attn_implementation == attn_implementation
    with torch.no_grad():  # HF inits the MLM bias and LayerNorms trivially; make them matter
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


# --------------------------------------------------------------------------------------------- oracle


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_matches_transformers_bert_for_pretraining(attn_implementation):
    config = small_config()
    hf = hf_pretraining(config, attn_implementation)
    ours = BertForPretraining(config).eval()
    state, missing_optional = pretraining_from_hf(hf.state_dict(), config)
    assert missing_optional == []
    ours.load_state_dict(state, strict=True)

    input_ids, attention_mask, token_type_ids, mlm_labels = make_batch(config)
    with torch.no_grad():
        ref = hf.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        ref_heads = hf(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        out = ours(input_ids, attention_mask, token_type_ids, mlm_labels)  # last layer at masked + [CLS] only
        full = ours(input_ids, attention_mask, token_type_ids, mlm_labels, return_sequence_output=True)

    real = attention_mask.bool()
    seq_diff = (full["sequence_output"] - ref.last_hidden_state).abs()[real].max().item()
    assert seq_diff < TOL
    assert (out["pooled_output"] - ref.pooler_output).abs().max().item() < TOL
    assert (out["nsp_logits"] - ref_heads.seq_relationship_logits).abs().max().item() < TOL
    predicted = mlm_labels != -100
    assert out["mlm_logits"].shape == (int(predicted.sum()), config.vocab_size)
    assert torch.equal(out["mlm_targets"], mlm_labels[predicted])
    assert (out["mlm_logits"] - ref_heads.prediction_logits[predicted]).abs().max().item() < TOL


def test_sparse_last_layer_equals_dense_in_values_and_gradients():
    """The pretraining fast path (last layer only at masked positions and [CLS]) is the same function
    as the full encoder: same losses and same gradient for every parameter (eval mode: no dropout)."""
    config = small_config(num_layers=3)
    torch.manual_seed(0)
    model = BertForPretraining(config).eval()
    input_ids, attention_mask, token_type_ids, mlm_labels = make_batch(config, seq_len=24)
    mlm_labels[2] = -100  # a row with nothing masked still feeds NSP through its [CLS]
    nsp_labels = torch.tensor([0, 1, 1, 0])
    grads, losses = [], []
    for full in (True, False):
        model.zero_grad()
        out = model(input_ids, attention_mask, token_type_ids, mlm_labels, return_sequence_output=full)
        mlm, nsp = pretraining_loss(out, nsp_labels)
        (mlm + nsp).backward()
        losses.append((mlm.item(), nsp.item()))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_encoder_defaults_match_explicit_inputs():
    config = small_config()
    torch.manual_seed(0)
    encoder = BertEncoder(config).eval()
    input_ids, _, _, _ = make_batch(config)
    with torch.no_grad():
        seq_a, pooled_a = encoder(input_ids)
        seq_b, pooled_b = encoder(input_ids, torch.ones_like(input_ids), torch.zeros_like(input_ids))
    assert seq_a.shape == (*input_ids.shape, config.hidden_size)
    assert pooled_a.shape == (input_ids.shape[0], config.hidden_size)
    torch.testing.assert_close(seq_a, seq_b, rtol=0, atol=1e-6)
    torch.testing.assert_close(pooled_a, pooled_b, rtol=0, atol=1e-6)


def test_too_long_sequence_is_a_bertlab_error():
    config = small_config(max_position_embeddings=16)
    encoder = BertEncoder(config)
    with pytest.raises(BertlabError, match="max_position_embeddings"):
        encoder(torch.zeros(1, 17, dtype=torch.long))


# ------------------------------------------------------------------------------------------- mapping


def test_round_trip_is_bitwise_and_outputs_are_fresh():
    config = small_config()
    torch.manual_seed(0)
    model = BertForPretraining(config)
    state = model.state_dict()
    hf_state = pretraining_heads_to_hf(state, config)
    assert pretraining_heads_to_hf(state).keys() == hf_state.keys()  # config inferred from shapes
    ptrs = [t.untyped_storage().data_ptr() for t in hf_state.values()]
    assert len(set(ptrs)) == len(ptrs), "outputs share storage"
    assert all(t.is_contiguous() for t in hf_state.values())
    own_ptrs = {t.untyped_storage().data_ptr() for t in state.values()}
    assert not own_ptrs & set(ptrs)
    back, missing_optional = pretraining_from_hf(hf_state, config)
    assert missing_optional == []
    assert back.keys() == state.keys()
    for key, tensor in state.items():
        assert torch.equal(back[key], tensor), key

    enc_state = model.encoder.state_dict()
    for prefix in ("", "bert."):
        enc_back, _ = encoder_from_hf(encoder_to_hf(enc_state, config, prefix=prefix), config)
        assert enc_back.keys() == enc_state.keys()
        assert all(torch.equal(enc_back[k], v) for k, v in enc_state.items())


def test_transformers_loads_our_state_dict():
    transformers = pytest.importorskip("transformers")
    config = small_config()
    ours = BertForPretraining(config).eval()
    hf = transformers.BertForPreTraining(transformers.BertConfig(**config.to_hf_dict())).eval()
    result = hf.load_state_dict(pretraining_heads_to_hf(ours.state_dict(), config), strict=False)
    assert result.unexpected_keys == []
    assert set(result.missing_keys) <= {
        "cls.predictions.decoder.weight",
        "bert.embeddings.position_ids",
        "bert.embeddings.token_type_ids",
    }


def test_save_and_from_pretrained_gives_identical_logits(tmp_path):
    transformers = pytest.importorskip("transformers")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    config = small_config()
    torch.manual_seed(0)
    ours = BertForPretraining(config).eval()
    with torch.no_grad():
        ours.mlm_head.bias.normal_()
    safetensors_torch.save_file(
        pretraining_heads_to_hf(ours.state_dict(), config), tmp_path / "model.safetensors"
    )
    (tmp_path / "config.json").write_text(json.dumps(config.to_hf_dict()))

    hf, info = transformers.BertForPreTraining.from_pretrained(tmp_path, output_loading_info=True)
    hf.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    decoder = hf.cls.predictions.decoder.weight
    assert decoder.data_ptr() == hf.bert.embeddings.word_embeddings.weight.data_ptr()

    input_ids, attention_mask, token_type_ids, mlm_labels = make_batch(config)
    with torch.no_grad():
        ref = hf(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        out = ours(input_ids, attention_mask, token_type_ids, mlm_labels)
    predicted = mlm_labels != -100
    assert (out["mlm_logits"] - ref.prediction_logits[predicted]).abs().max().item() < TOL
    assert (out["nsp_logits"] - ref.seq_relationship_logits).abs().max().item() < TOL


def test_from_hf_accepts_old_names_no_prefix_and_no_pooler():
    config = small_config()
    torch.manual_seed(0)
    encoder = BertEncoder(config)
    hf_state = encoder_to_hf(encoder.state_dict(), config, prefix="")
    hf_state = {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
        for k, v in hf_state.items()
        if not k.startswith("pooler.")
    }
    hf_state["embeddings.position_ids"] = torch.arange(config.max_position_embeddings)[None]
    hf_state["classifier.weight"] = torch.zeros(3, config.hidden_size)  # other heads are ignored
    state, missing_optional = encoder_from_hf(hf_state, config)
    assert missing_optional == ["pooler.weight", "pooler.bias"]
    result = BertEncoder(config).load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == sorted(missing_optional) and not result.unexpected_keys


def test_from_hf_errors_name_the_problem():
    config = small_config()
    hf_state = encoder_to_hf(BertEncoder(config).state_dict(), config)
    broken = dict(hf_state)
    del broken["bert.encoder.layer.1.attention.self.key.weight"]
    with pytest.raises(BertlabError, match=r"missing 1 .*encoder\.layer\.1\.attention\.self\.key\.weight"):
        encoder_from_hf(broken, config)
    broken = dict(hf_state)
    broken["bert.encoder.layer.0.intermediate.dense.weight"] = torch.zeros(128, 64)
    with pytest.raises(BertlabError, match=r"intermediate\.dense\.weight.*\[256, 64\].*\[128, 64\]"):
        encoder_from_hf(broken, config)
    with pytest.raises(BertlabError, match="num_layers=1"):
        encoder_from_hf(hf_state, small_config(num_layers=1))


# --------------------------------------------------------------------------------------------- heads


def test_mlm_decoder_is_tied_to_word_embeddings():
    config = small_config()
    model = BertForPretraining(config)
    embedding = model.encoder.word_embeddings
    assert model.mlm_head.decoder_weight is embedding
    assert model.mlm_head.decoder_weight.data_ptr() == embedding.data_ptr()
    assert not any(k.startswith("mlm_head") and "embed" in k for k in model.state_dict())
    assert sum(p is embedding for p in model.parameters()) == 1

    # Gradient reaches the embedding through the decoder alone.
    hidden = torch.randn(3, config.hidden_size)
    model.mlm_head(hidden).sum().backward()
    assert embedding.grad is not None and embedding.grad.abs().sum() > 0


def test_pretraining_loss_and_no_masked_positions():
    config = small_config()
    model = BertForPretraining(config)
    input_ids, attention_mask, token_type_ids, mlm_labels = make_batch(config)
    nsp_labels = torch.tensor([0, 1, 0, 1])
    out = model(input_ids, attention_mask, token_type_ids, mlm_labels)
    mlm_loss, nsp_loss = pretraining_loss(out, nsp_labels)
    assert torch.isfinite(mlm_loss) and torch.isfinite(nsp_loss)

    out = model(input_ids, attention_mask, token_type_ids, torch.full_like(mlm_labels, -100))
    assert out["mlm_logits"].shape == (0, config.vocab_size)
    mlm_loss, nsp_loss = pretraining_loss(out, nsp_labels)
    assert mlm_loss.item() == 0.0
    (mlm_loss + nsp_loss).backward()
    assert model.mlm_head.dense.weight.grad is not None


def test_classification_heads():
    config = small_config()
    encoder = BertEncoder(config).eval()
    input_ids, attention_mask, _, _ = make_batch(config)
    seq, pooled = encoder(input_ids, attention_mask)
    cls_head = SequenceClassificationHead(config.hidden_size, 3, dropout=0.1, pooling="cls").eval()
    assert cls_head(seq, pooled, attention_mask).shape == (4, 3)
    torch.testing.assert_close(cls_head(seq, pooled), cls_head.classifier(pooled))

    mean_head = SequenceClassificationHead(config.hidden_size, 3, dropout=0.0, pooling="mean")
    expected = torch.stack([seq[i, attention_mask[i].bool()].mean(0) for i in range(4)])
    torch.testing.assert_close(mean_head(seq, pooled, attention_mask), mean_head.classifier(expected))
    with pytest.raises(BertlabError, match="pooling"):
        SequenceClassificationHead(config.hidden_size, 3, dropout=0.0, pooling="max")

    token_head = TokenClassificationHead(config.hidden_size, 9, dropout=0.1)
    assert token_head(seq).shape == (4, input_ids.shape[1], 9)


# -------------------------------------------------------------------------------------------- config


def test_config_hf_round_trip():
    config = small_config(hidden_dropout=0.2, pad_token_id=1)
    assert BertConfig.from_hf_dict(config.to_hf_dict()) == config
    transformers = pytest.importorskip("transformers")
    hf_dict = transformers.BertConfig(**config.to_hf_dict()).to_dict()
    assert BertConfig.from_hf_dict(hf_dict) == config


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "roberta"}, "model_type"),
        ({"hidden_act": "gelu_new"}, "hidden_act"),
        ({"hidden_act": "relu"}, "hidden_act"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
        ({"num_attention_heads": 5}, "divisible"),
        ({"num_hidden_layers": None}, "num_hidden_layers"),
        ({"model_type": None}, "model_type"),
    ],
)
def test_config_from_hf_rejects(change, message):
    d = small_config().to_hf_dict()
    for key, value in change.items():
        if value is None:
            del d[key]
        else:
            d[key] = value
    with pytest.raises(BertlabError, match=message):
        BertConfig.from_hf_dict(d)


def test_config_rejects_bad_heads():
    with pytest.raises(BertlabError, match="divisible"):
        BertConfig(hidden_size=100, num_heads=12)


# ------------------------------------------------------------------------------------------- hygiene


def test_import_does_not_pull_training_stack():
    code = (
        "import sys, bertlab.encoder\n"
        "bad = [m for m in ('lightning', 'pytorch_lightning', 'hydra', 'omegaconf', 'datasets', 'transformers')"
        " if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_compiled_pretraining_model_equals_eager():
    """hardware.compile changes speed, not the result: torch.compile of the pretraining model (as the
    PretrainModule compiles it) gives the eager losses and gradients on a padded batch."""
    config = small_config()
    torch.manual_seed(0)
    model = BertForPretraining(config).eval()
    compiled = BertForPretraining(config).eval()
    compiled.load_state_dict(model.state_dict())
    compiled.compile(dynamic=True)  # in place, as PretrainModule and run.py compile
    assert compiled.state_dict().keys() == model.state_dict().keys()
    input_ids, attention_mask, token_type_ids, mlm_labels = make_batch(config)
    nsp_labels = torch.tensor([0, 1, 1, 0])
    results = []
    for m in (model, compiled):
        mlm, nsp = pretraining_loss(m(input_ids, attention_mask, token_type_ids, mlm_labels), nsp_labels)
        (mlm + nsp).backward()
        results.append(((mlm + nsp).item(), {n: p.grad.clone() for n, p in m.named_parameters()}))
    assert results[1][0] == pytest.approx(results[0][0], rel=1e-5)
    for name, g in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], g, rtol=1e-4, atol=1e-5, msg=name)
