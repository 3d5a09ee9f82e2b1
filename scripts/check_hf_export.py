"""Does a classifier's HF export, read by its documented loader, answer as bertlab does on real data?

    .venv/bin/python scripts/check_hf_export.py /work/runs/sst2_minilm ../shared/data/sst2/dev.tsv

The export is read the way its ``config.json`` says: ``BertForSequenceClassification`` with
transformers (``[CLS]`` pooling); ``BertModel`` plus ``modules.json`` with sentence-transformers
(mean pooling: its output is the logits). Every row of the table (``--text-column``, GLUE-style TSV,
quotes as text) goes through that loader and through ``bertlab-predict``'s predictor (torch backend);
the script prints the largest difference of the label probabilities and how many labels agree.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from benchenv import read_tsv
from bertlab import runs
from bertlab.tasks.base import load_predictor


def loader_probabilities(export: Path, texts: list[str], problem_type: str) -> np.ndarray:
    config = json.loads((export / "config.json").read_text())
    if (export / "modules.json").is_file():
        from sentence_transformers import SentenceTransformer

        logits = SentenceTransformer(str(export), device="cpu").encode(
            texts, convert_to_tensor=True, batch_size=64
        )
    else:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        assert config["architectures"] == ["BertForSequenceClassification"], config["architectures"]
        tokenizer = AutoTokenizer.from_pretrained(export)
        model = AutoModelForSequenceClassification.from_pretrained(export).eval()
        chunks = []
        with torch.no_grad():
            for i in range(0, len(texts), 64):
                enc = tokenizer(
                    texts[i : i + 64], padding=True, truncation=True, max_length=128, return_tensors="pt"
                )
                chunks.append(model(**enc).logits)
        logits = torch.cat(chunks)
    logits = logits.float()
    return (logits.sigmoid() if problem_type == "multi_label" else logits.softmax(-1)).numpy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a classifier's run directory or export directory")
    p.add_argument("table", type=Path, help="a TSV with a header")
    p.add_argument("--text-column", default="sentence")
    args = p.parse_args()
    export = runs.export_of(args.run)
    if export is None:
        raise SystemExit(f"{args.run}: the run has no export/")
    texts, _ = read_tsv(args.table, args.text_column, None)
    predictor = load_predictor(export)
    labels = predictor.task.labels
    ours = predictor.predict([(t, None) for t in texts])
    ours_p = np.array([[a["scores"][name] for name in labels] for a in ours])
    theirs_p = loader_probabilities(export, texts, predictor.task.problem_type)
    same = int((ours_p.argmax(-1) == theirs_p.argmax(-1)).sum())
    result = {
        "export": str(export),
        "rows": len(texts),
        "same_label": same,
        "max_abs_probability_difference": float(np.abs(ours_p - theirs_p).max()),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
