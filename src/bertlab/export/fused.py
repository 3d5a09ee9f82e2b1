"""ONNX export that onnxruntime's transformer optimizer fuses completely.

``bertlab.export.onnx`` exports with torch's dynamo exporter and ``F.scaled_dot_product_attention``.
onnxruntime's ``optimize_model(model_type="bert")`` recognises attention and embeddings by matching
fixed subgraphs, and that graph matches only BiasGelu and SkipLayerNormalization: no Attention, no
EmbedLayerNormalization. Here the same weights are exported through a math path written as the
subgraphs the optimizer looks for (``onnxruntime/transformers/fusion_attention.py``,
``fusion_embedlayer.py``), with the TorchScript exporter (``dynamo=False``) whose op-by-op output keeps
that shape:

* embeddings: ``Add(Add(Gather(word, ids), Gather(type, types)), Gather(position, positions))`` where
  ``positions = Slice(arange[1, max_pos], 0, seq_len)``: BERT's position-id buffer. The training
  forward adds a slice of the position table instead (no [B, T] ids), which matches nothing;
* attention: separate ``MatMul + Add`` for query, key and value (the training forward has one fused
  ``qkv`` Linear, split here into three slices of its weight, constant-folded by the exporter),
  ``Reshape -> Transpose`` per head (key straight to [B, heads, d, T]), ``MatMul / sqrt(d)``, plus
  the mask ``(1 - Cast(mask[:, None, None, :])) * -10000``, ``Softmax``, ``MatMul``, ``Transpose ->
  Reshape`` and the output ``MatMul + Add``. SDPA exports as one op (or a different decomposition)
  that the optimizer cannot see through.

The math path is switched on for the export only (:func:`fusable_forward`), per module instance: the
training and prediction forward is untouched. It computes the same function: the additive -10000
makes a padded key's softmax weight exp(-10000) = 0 in float32, exactly like SDPA's boolean mask, so
a padded position cannot change a real one. The one difference is a row with no real token at all
(attention_mask all zeros), which SDPA leaves at zeros and this path spreads evenly; real inputs
always have [CLS].

By default the fused Attention ops take the raw [B, T] mask (``raw_attention_mask=True``), exact for
any mask; the optimizer's own BERT default turns it into one length per row, correct only when every
row is padded on the right.

The optimized file also carries ONNX value infos (symbolic shape inference), so that a plain
``onnxruntime.quantization.quantize_dynamic(path, out, weight_type=QuantType.QInt8, per_channel=True)``
works on it: without them the quantizer cannot type the outputs of the com.microsoft fused ops and
stops. Dynamic int8 then runs on the fused ops (QAttention, QEmbedLayerNormalization, MatMulInteger).
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import math
import tempfile
import types
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bertlab.encoder.bert import BertConfig, BertEncoder, SelfAttention
from bertlab.errors import BertlabError
from bertlab.io import atomic_write

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
DEFAULT_OPSET = 14  # what the optimizer was written against; 17, 18 and 20 fuse the same (torch 2.13)
# Added to the scores of padded keys. The optimizer's BERT pattern expects a negative constant;
# -10000 is its default value, so the fused op needs no mask_filter_value attribute.
MASK_FILL = -10000.0
GELU_OPS = ("Gelu", "BiasGelu", "FastGelu", "GemmFastGelu")
# the fused operators a BERT graph gets (what onnx.json reports)
FUSED_OPS = ("Attention", "EmbedLayerNormalization", "SkipLayerNormalization", *GELU_OPS)


# --- the export-only math path -------------------------------------------------------------------


def _fusable_attention(self: SelfAttention, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
    """``SelfAttention.forward`` spelled as the subgraph of ``FusionAttention``. ``attn_mask`` is the
    additive float mask [B, 1, 1, T] from :func:`_fusable_embed`, not the training path's bool mask."""
    hidden = self.num_heads * self.head_dim
    weight, bias = self.qkv.weight, self.qkv.bias  # rows [0:H] query, [H:2H] key, [2H:3H] value

    def project(i: int) -> Tensor:  # -> [B, T, heads, head_dim]; one MatMul + Add each
        y = nn.functional.linear(
            x, weight[i * hidden : (i + 1) * hidden], bias[i * hidden : (i + 1) * hidden]
        )
        return y.view(y.size(0), y.size(1), self.num_heads, self.head_dim)

    q = project(0).permute(0, 2, 1, 3)  # [B, heads, T, d]
    k = project(1).permute(0, 2, 3, 1)  # [B, heads, d, T]: one Transpose, the pattern's key path
    v = project(2).permute(0, 2, 1, 3)
    scores = torch.matmul(q, k) / math.sqrt(self.head_dim)
    if attn_mask is not None:
        scores = scores + attn_mask
    y = torch.matmul(torch.softmax(scores, dim=-1), v).permute(0, 2, 1, 3)
    return self.out(y.reshape(y.size(0), y.size(1), hidden))


def _fusable_embed(self: BertEncoder, input_ids: Tensor, attention_mask: Tensor | None,
                   token_type_ids: Tensor | None) -> tuple[Tensor, Tensor | None]:  # fmt: skip
    """``BertEncoder._embed`` spelled as the subgraph of ``FusionEmbedLayerNormalization``: embeddings
    [B, T, H] and the additive attention mask [B, 1, 1, T] that :func:`_fusable_attention` takes."""
    emb = self.embeddings
    # BERT's position-id buffer [1, max_pos], sliced to the sequence length (a graph constant).
    positions = torch.arange(emb.position_embeddings.num_embeddings, device=input_ids.device).unsqueeze(0)
    if token_type_ids is None:
        token_type_ids = torch.zeros_like(input_ids)
    x = emb.word_embeddings(input_ids) + emb.token_type_embeddings(token_type_ids)
    x = emb.dropout(emb.layer_norm(x + emb.position_embeddings(positions[:, : input_ids.size(1)])))
    if attention_mask is None:
        return x, None
    mask = attention_mask.unsqueeze(1).unsqueeze(2).to(x.dtype)  # Unsqueeze, Unsqueeze, Cast
    return x, (1.0 - mask) * MASK_FILL


@contextlib.contextmanager
def fusable_forward(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every :class:`BertEncoder` and :class:`SelfAttention` inside ``model`` runs the
    export math path. Set on the instances and removed on exit: the classes and any other model are
    untouched. Same outputs as the normal forward, to float rounding."""
    patched: list[tuple[nn.Module, str]] = []
    try:
        for module in model.modules():
            if isinstance(module, BertEncoder):
                module._embed = types.MethodType(_fusable_embed, module)  # type: ignore[method-assign]
                patched.append((module, "_embed"))
            elif isinstance(module, SelfAttention):
                module.forward = types.MethodType(_fusable_attention, module)  # type: ignore[method-assign]
                patched.append((module, "forward"))
        if not any(name == "_embed" for _, name in patched):
            raise BertlabError(f"fused ONNX export: no BertEncoder inside {type(model).__name__}")
        yield model
    finally:
        for module, name in patched:
            delattr(module, name)  # back to the class's method


class _TupleOutputs(nn.Module):
    """``model`` with its outputs as a tuple: a dict output is read at ``names`` (e.g. the pretraining
    model's ``{"mlm_logits", "nsp_logits", ...}``), a tensor becomes a 1-tuple."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.names = tuple(names)

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor
    ) -> tuple[Tensor, ...]:
        out = self.model(input_ids, attention_mask, token_type_ids)
        if isinstance(out, Mapping):
            missing = [n for n in self.names if n not in out]
            if missing:
                raise BertlabError(
                    f"fused ONNX export: the model's outputs have no {missing} (has {list(out)})"
                )
            return tuple(out[n] for n in self.names)
        out = tuple(out) if isinstance(out, tuple | list) else (out,)
        if len(out) != len(self.names):
            raise BertlabError(
                f"fused ONNX export: the model returns {len(out)} tensors, output_names has {len(self.names)}"
            )
        return out


# --- running and checking ------------------------------------------------------------------------


def make_session(path: str | Path, threads: int | None = 1) -> Any:
    """An onnxruntime CPU session; ``threads`` intra-op threads (None: onnxruntime's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session: Any, batch: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """The session's outputs for a batch of the three int64 inputs."""
    return session.run(None, {n: np.ascontiguousarray(batch[n], dtype=np.int64) for n in INPUT_NAMES})


def torch_outputs(
    model: nn.Module, batch: Mapping[str, np.ndarray], output_names: Sequence[str]
) -> list[np.ndarray]:
    """The model's own (training-path) outputs for ``batch`` in eval mode, as float32 arrays. The
    model's train/eval mode is left as it was."""
    was_training = model.training
    try:
        with torch.no_grad():
            out = _TupleOutputs(model.eval(), output_names)(
                *(torch.from_numpy(batch[n]) for n in INPUT_NAMES)
            )
    finally:
        model.train(was_training)
    return [t.float().numpy() for t in out]


def max_abs_diff(
    session_or_path: Any,
    model: nn.Module,
    batches: Sequence[Mapping[str, np.ndarray]],
    output_names: Sequence[str],
) -> dict[str, float]:
    """Largest |onnxruntime - PyTorch| per output over ``batches`` (inf on a shape mismatch or NaN)."""
    session = make_session(session_or_path) if isinstance(session_or_path, str | Path) else session_or_path
    worst = dict.fromkeys(output_names, 0.0)
    for batch in batches:
        for name, got, ref in zip(
            output_names, run_onnx(session, batch), torch_outputs(model, batch, output_names)
        ):
            d = float(np.abs(got - ref).max()) if got.shape == ref.shape and got.size else 0.0
            if got.shape != ref.shape or not np.isfinite(d):
                d = float("inf")
            worst[name] = max(worst[name], d)
    return worst


def op_counts(path_or_model: Any) -> dict[str, int]:
    """Node count per op type of an ONNX file or ``ModelProto`` (fused ops are plain op types here)."""
    import onnx

    proto = onnx.load(str(path_or_model)) if isinstance(path_or_model, str | Path) else path_or_model
    return dict(sorted(collections.Counter(node.op_type for node in proto.graph.node).items()))


def fusion_problems(counts: Mapping[str, int], num_layers: int) -> list[str]:
    """What keeps a graph from being fully fused for a ``num_layers`` encoder ([] when it is): one
    Attention per layer, one EmbedLayerNormalization, two SkipLayerNormalization per layer (after
    attention and after the feed-forward; the embeddings' LayerNorm lives in EmbedLayerNormalization),
    a fused GELU per layer, and no Softmax left over (an attention block that was not fused)."""
    problems = []
    expected = {
        "Attention": num_layers,
        "EmbedLayerNormalization": 1,
        "SkipLayerNormalization": 2 * num_layers,
    }
    for op, n in expected.items():
        if counts.get(op, 0) != n:
            problems.append(f"{op}: {counts.get(op, 0)} (expected {n})")
    gelus = sum(counts.get(op, 0) for op in GELU_OPS)
    if gelus < num_layers:
        problems.append(f"fused GELU: {gelus} (expected >= {num_layers})")
    if counts.get("Softmax", 0):
        problems.append(f"Softmax: {counts['Softmax']} left unfused")
    return problems


def quantize_int8(
    fp32_path: str | Path, int8_path: str | Path, *, reduce_range: bool = False
) -> dict[str, int]:
    """Dynamic int8 (per-channel QInt8 weights) of an optimized graph; returns its op counts. The fused
    ops are quantized themselves (QAttention, QEmbedLayerNormalization, MatMulInteger).

    ``reduce_range`` (7-bit weights) avoids the u8 x s8 saturation of CPUs without VNNI (AVX2 only):
    on such a machine it agreed with fp32 slightly more often on SST-2 (MiniLM)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(
            str(fp32_path),
            str(int8_path),
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=reduce_range,
        )
    return op_counts(int8_path)


# --- the export ----------------------------------------------------------------------------------


def export_optimized_onnx(
    model: nn.Module,
    sample: Mapping[str, np.ndarray],
    path: str | Path,
    *,
    num_heads: int,
    hidden_size: int,
    output_names: Sequence[str],
    opset: int = DEFAULT_OPSET,
    max_positions: int | None = None,
    raw_attention_mask: bool = True,
    check_batches: Sequence[Mapping[str, np.ndarray]] | None = None,
    atol: float | None = 1e-4,
    require_full_fusion: bool = True,
) -> dict[str, int]:
    """Export ``model`` to ONNX, fuse it with onnxruntime's BERT optimizer and save it at ``path``.
    Returns the op counts of the saved graph (Attention, EmbedLayerNormalization, ...).

    ``model``: any module built around :class:`BertEncoder` whose forward is ``(input_ids,
    attention_mask, token_type_ids)`` -> a tensor, a tuple of tensors, or a dict read at
    ``output_names``. ``sample``: int64 [B, T] arrays of the three inputs, traced once; the graph's
    batch and sequence axes are dynamic (an output axis is dynamic when it follows the input's).
    ``max_positions`` (default: the encoder's ``max_position_embeddings``) is the longest sequence the
    graph is for; it is stored in the file's metadata.

    Checked before anything is written: unless ``require_full_fusion=False`` every layer must be fused
    (:func:`fusion_problems`), and unless ``atol=None`` onnxruntime must give PyTorch's outputs to
    ``atol`` on ``sample`` and on ``check_batches`` (give padded batches and sentence pairs). Raises
    :class:`BertlabError` otherwise, leaving ``path`` as it was.
    """
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    path = Path(path)
    config = encoder_config(model)
    if (num_heads, hidden_size) != (config.num_heads, config.hidden_size):
        raise BertlabError(
            f"fused ONNX export: num_heads={num_heads}, hidden_size={hidden_size} but the encoder has "
            f"{config.num_heads} heads of hidden size {config.hidden_size}"
        )
    max_positions = int(max_positions or config.max_position_embeddings)
    if max_positions > config.max_position_embeddings:
        raise BertlabError(
            f"fused ONNX export: max_positions={max_positions} exceeds the encoder's "
            f"max_position_embeddings ({config.max_position_embeddings})"
        )
    sample = _check_sample(sample, max_positions)
    names = list(output_names)
    graph = _TupleOutputs(model, names)
    was_training = model.training
    model.eval()  # no dropout in the graph
    try:
        with tempfile.TemporaryDirectory(prefix="bertlab-fused-") as tmp:
            raw = Path(tmp) / "exported.onnx"
            _torchscript_export(graph, sample, raw, names, opset)
            options = FusionOptions("bert")
            options.use_raw_attention_mask(raw_attention_mask)
            with _quiet():
                optimized = optimize_model(
                    str(raw),
                    model_type="bert",
                    num_heads=num_heads,
                    hidden_size=hidden_size,
                    optimization_options=options,
                    opt_level=0,  # the Python fusions only; onnxruntime optimizes again at load time
                )
                fused = Path(tmp) / "optimized.onnx"
                optimized.save_model_to_file(str(fused))  # sorts the nodes, declares com.microsoft
                # Value infos for the fused ops' outputs: quantize_dynamic needs every tensor's type.
                proto = SymbolicShapeInference.infer_shapes(onnx.load(str(fused)), auto_merge=True)
            counts = op_counts(proto)
            problems = fusion_problems(counts, config.num_layers) if require_full_fusion else []
            if problems:
                raise BertlabError(
                    f"fused ONNX export: the optimizer did not fuse the graph: {'; '.join(problems)}"
                )
            onnx.helper.set_model_props(
                proto, {"bertlab.max_positions": str(max_positions), "bertlab.exporter": "fused"}
            )
            onnx.save(proto, str(fused))
            if atol is not None:
                worst = max_abs_diff(fused, model, [sample, *(check_batches or ())], names)
                if not max(worst.values()) <= atol:
                    raise BertlabError(
                        f"fused ONNX export: onnxruntime and PyTorch differ by {worst} (tolerance {atol:g})"
                    )
            _replace(fused, path)
    finally:
        model.train(was_training)
    return counts


def encoder_config(model: nn.Module) -> BertConfig:
    """The config of the one :class:`BertEncoder` inside ``model``."""
    encoders = [m for m in model.modules() if isinstance(m, BertEncoder)]
    if len(encoders) != 1:
        raise BertlabError(f"fused ONNX export: expected one BertEncoder in the model, found {len(encoders)}")
    return encoders[0].config


def _check_sample(sample: Mapping[str, np.ndarray], max_positions: int) -> dict[str, np.ndarray]:
    missing = [n for n in INPUT_NAMES if n not in sample]
    if missing:
        raise BertlabError(f"fused ONNX export: sample has no {missing}")
    out = {n: np.ascontiguousarray(sample[n], dtype=np.int64) for n in INPUT_NAMES}
    shapes = {out[n].shape for n in INPUT_NAMES}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise BertlabError(f"fused ONNX export: sample inputs must share one [B, T] shape, got {shapes}")
    if out["input_ids"].shape[1] > max_positions:
        raise BertlabError(
            f"fused ONNX export: sample length {out['input_ids'].shape[1]} exceeds max_positions={max_positions}"
        )
    return out


def _dynamic_axes(graph: nn.Module, sample: Mapping[str, np.ndarray], names: Sequence[str]) -> dict:
    """Inputs: [batch, seq]. Outputs: found by running the model once more on a batch with one more row
    and one fewer position (one more when T == 1): an axis that moves with the batch is "batch", one
    that moves with the sequence is "seq". Not guessed from sizes (a label count may equal T)."""
    args = [torch.from_numpy(sample[n]) for n in INPUT_NAMES]
    seq_step = -1 if args[0].shape[1] > 1 else 1
    moved = [torch.cat([a, a[:1]], dim=0) for a in args]
    if seq_step < 0:
        moved = [a[:, :-1] for a in moved]
    else:  # an extra padding position (id 0, mask 0, type 0); only the shapes matter here
        moved = [torch.cat([a, torch.zeros_like(a[:, :1])], dim=1) for a in moved]
    with torch.no_grad():
        before, after = graph(*args), graph(*moved)
    axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "seq"} for n in INPUT_NAMES}
    for name, a, b in zip(names, before, after):
        changed = [(i, n - m) for i, (m, n) in enumerate(zip(a.shape, b.shape)) if m != n]
        # with T == 1 both steps are +1: the first changed axis is the batch
        axes[name] = {
            i: "batch" if (step == 1 and (seq_step < 0 or i == 0)) else "seq" for i, step in changed
        }
    return axes


def _torchscript_export(
    graph: nn.Module, sample: Mapping[str, np.ndarray], path: Path, names: Sequence[str], opset: int
) -> None:
    """The TorchScript exporter: it writes the traced ops one by one, so the math path above reaches
    the optimizer as written (the dynamo exporter's graph of the same code fused no Attention and no
    EmbedLayerNormalization). torch 2.13 marks this exporter deprecated (a DeprecationWarning, silenced
    here); the tests fail loudly the day it stops working."""
    args = tuple(torch.from_numpy(sample[n]) for n in INPUT_NAMES)
    try:
        with fusable_forward(graph), _quiet():
            axes = _dynamic_axes(graph, sample, names)
            torch.onnx.export(
                graph,
                args,
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=list(INPUT_NAMES),
                output_names=list(names),
                dynamic_axes=axes,
                do_constant_folding=True,  # folds the q/k/v weight slices into plain initializers
            )
    except BertlabError:
        raise
    except Exception as e:  # the exporter raises many types; report one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise BertlabError(f"fused ONNX export failed: {type(e).__name__}: {first[:200]}") from None


def _replace(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` atomically (``src`` lives in a temporary directory, maybe on another
    file system, so it is copied under a temporary name beside ``dst`` and renamed)."""
    atomic_write(dst, lambda f: f.write(src.read_bytes()))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No prints, warnings or log records from the exporter, the optimizer and the quantizer."""
    root, saved = logging.getLogger(), logging.getLogger().level
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            root.setLevel(logging.ERROR)  # onnxruntime's tools log through the root logger
            yield
    finally:
        root.setLevel(saved)


__all__ = [
    "DEFAULT_OPSET",
    "FUSED_OPS",
    "INPUT_NAMES",
    "encoder_config",
    "export_optimized_onnx",
    "fusable_forward",
    "fusion_problems",
    "make_session",
    "max_abs_diff",
    "op_counts",
    "quantize_int8",
    "run_onnx",
    "torch_outputs",
]
