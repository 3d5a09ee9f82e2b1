"""Label values of labelled tables: parsed per problem type and ordered into a label set."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from bertlab.errors import BertlabError

__all__ = ["PROBLEM_TYPES", "parse_labels", "shown_labels", "sort_labels"]

# What a classifier predicts per row: one label, a set of labels, or a number.
PROBLEM_TYPES = ("single_label", "multi_label", "regression")
_INT = re.compile(r"[+-]?\d+\Z")
_SHOWN_LABELS = 20


def sort_labels(labels: Sequence[str]) -> list[str]:
    """Distinct labels, sorted numerically when all are integers ("2" < "10"), else as text."""
    distinct = set(labels)
    if distinct and all(_INT.match(x) for x in distinct):
        return sorted(distinct, key=lambda x: (int(x), x))
    return sorted(distinct)


def _label_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def shown_labels(labels: Sequence[str]) -> str:
    head = ", ".join(repr(x) for x in labels[:_SHOWN_LABELS])
    more = f", ... ({len(labels)} in all)" if len(labels) > _SHOWN_LABELS else ""
    return f"[{head}{more}]"


def parse_labels(
    values: list[Any], problem_type: str, column: str, separator: str | None, where: Callable[[int], str]
) -> list[Any]:
    """Row labels as str (single_label), list[str] (multi_label) or float (regression)."""
    out: list[Any] = []
    for i, value in enumerate(values):
        if problem_type == "multi_label":
            if value is None:
                items: list[Any] = []
            elif isinstance(value, list | tuple):
                items = list(value)
            else:
                text = str(value).strip()
                if text.startswith("["):
                    try:
                        items = json.loads(text)
                    except json.JSONDecodeError:
                        raise BertlabError(
                            f"{where(i)}: column {column!r}: {text!r} is not a JSON list of labels"
                        ) from None
                    if not isinstance(items, list):
                        raise BertlabError(f"{where(i)}: column {column!r}: {text!r} is not a list")
                else:
                    items = text.split(separator if separator else ",")
            labels = [_label_text(x) for x in items if x is not None]
            out.append(list(dict.fromkeys(x for x in labels if x)))
            continue
        if value is None or (isinstance(value, str) and not value.strip()):
            raise BertlabError(f"{where(i)}: empty label in column {column!r}")
        if problem_type == "regression":
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise BertlabError(
                    f"{where(i)}: label {value!r} in column {column!r} is not a number"
                ) from None
            if not math.isfinite(number):
                raise BertlabError(f"{where(i)}: label {value!r} in column {column!r} is not finite")
            out.append(number)
        else:
            out.append(_label_text(value))
    return out
