"""Private memory (RssAnon) of the pretraining data's ``datasets`` steps over many documents.

Default: the NSP instance-building ``datasets.map`` as a function of its batch size.

Builds ``--docs`` synthetic tokenized documents on disk, runs bertlab's ``build_instances`` over them
with ``datasets.map`` in batches of ``--batch-docs`` documents, and prints RssAnon during and after
the map. Each map batch becomes one Arrow record batch of the output, and the memory-mapped output
keeps native bookkeeping per record batch, so small batches grow the memory at the end of the map
in proportion to the corpus:

    python scripts/map_memory_probe.py --docs 400000 --batch-docs 16
    python scripts/map_memory_probe.py --docs 400000 --batch-docs 1000

``--split``: writing the training split (95% of the documents, chosen at random) the way bertlab
does, a map that keeps the split's rows, against ``select(sorted indices).flatten_indices()``,
each on its own, with the peak sampled every 20 ms:

    python scripts/map_memory_probe.py --docs 1000000 --split
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable

import datasets
import numpy as np

from bertlab.data.pretrain import MAP_BATCH_DOCS, build_instances, keep_rows
from scaling_rss import anon_kb  # scripts/ is on the path when a script runs


def rss_anon_mb() -> int:
    return anon_kb(os.getpid()) // 1024


def peak_during(step: Callable[[], object]) -> tuple[int, int, int]:
    """RssAnon before, at the peak (sampled every 20 ms) and after ``step()``, in MB."""
    before, peak, done = rss_anon_mb(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_anon_mb())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    step()
    done.set()
    sampler.join()
    return before, peak[0], rss_anon_mb()


def probe_split(docs: datasets.Dataset, tmp: str) -> None:
    n = len(docs)
    in_train = np.zeros(n, dtype=bool)
    in_train[np.random.default_rng(0).permutation(n)[n // 20 :]] = True
    ways = {
        "map keeping the rows": lambda: docs.map(
            keep_rows,
            batched=True,
            batch_size=MAP_BATCH_DOCS,
            with_indices=True,
            fn_kwargs={"keep": in_train},
            cache_file_name=f"{tmp}/split_map.arrow",
        ),
        "select + flatten_indices": lambda: docs.select(np.flatnonzero(in_train)).flatten_indices(
            cache_file_name=f"{tmp}/split_select.arrow"
        ),
    }
    for name, step in ways.items():
        before, peak, after = peak_during(step)
        print(
            f"{n} documents, training split by {name}: RssAnon before {before} MB, peak {peak} MB, after {after} MB"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=400_000)
    ap.add_argument("--batch-docs", type=int, default=1000)
    ap.add_argument("--split", action="store_true", help="probe writing the training split instead")
    args = ap.parse_args()

    def documents():  # noqa: ANN202 - a generator for datasets
        rng = random.Random(0)
        for _ in range(args.docs):
            yield {"segments": [[rng.randrange(5, 2000) for _ in range(12)] for _ in range(4)]}

    with tempfile.TemporaryDirectory() as tmp:
        ids = datasets.Sequence(datasets.Value("int32"))
        docs = datasets.Dataset.from_generator(
            documents, cache_dir=tmp, features=datasets.Features({"segments": datasets.Sequence(ids)})
        )
        if args.split:
            probe_split(docs, tmp)
            return
        before = rss_anon_mb()
        during: list[int] = []

        def build(batch: dict, indices: list[int], **kwargs) -> dict:  # noqa: ANN003
            during.append(rss_anon_mb())
            return build_instances(batch, indices, **kwargs)

        started = time.time()
        docs.map(
            build,
            batched=True,
            batch_size=args.batch_docs,
            with_indices=True,
            remove_columns=["segments"],
            cache_file_name=f"{tmp}/instances.arrow",
            fn_kwargs={
                "docs": docs,
                "max_seq_length": 64,
                "short_seq_prob": 0.1,
                "dupe_factor": 1,
                "seed": 1,
                "cls_id": 1,
                "sep_id": 2,
            },
            features=datasets.Features(
                {"input_ids": ids, "a_len": datasets.Value("int32"), "nsp_label": datasets.Value("int8")}
            ),
        )
        print(
            f"{args.docs} documents, map batches of {args.batch_docs}: RssAnon before {before} MB, "
            f"during {min(during)}-{max(during)} MB, after the map {rss_anon_mb()} MB "
            f"({time.time() - started:.0f} s)"
        )


if __name__ == "__main__":
    main()
