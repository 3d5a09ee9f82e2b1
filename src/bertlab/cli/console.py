"""What the commands print: bertlab's own lines and progress, not third-party tips and notices.

Every command calls :func:`quiet_third_party` first; this is the one place where other libraries'
console output is filtered. What is kept: errors, warnings that concern the user's run, progress
bars, and bertlab's log lines.
"""

from __future__ import annotations

import logging
import warnings

# (message pattern, category) of warnings that say nothing about the user's run
_IGNORED_WARNINGS = (
    (r".*isinstance\(treespec, LeafSpec\).*", Warning),  # torch's pytree API change, inside Lightning
    (r"Detected pickle protocol .* in the checkpoint", UserWarning),  # torch.load(weights_only=True)
    (r".*does not have many workers.*", Warning),  # num_workers=0 is the CPU default on purpose
    (r".*TorchScript.*deprecated.*", Warning),  # the fused ONNX export uses it on purpose
    (r".*The number of training batches .* is smaller than the logging interval.*", Warning),
)
# loggers whose INFO lines are notices ("GPU available: False", tips, "Restoring states from ...")
_NOTICE_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


def quiet_third_party() -> None:
    for pattern, category in _IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=category)
    for name in _NOTICE_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
