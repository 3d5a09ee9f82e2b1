"""Values that the plain-torch models and the data pipeline must agree on, defined once.

Neither package imports the other (see docs/architecture.md), so what both need lives here.
"""

# Label of a position that is not predicted: cross_entropy's default ignore_index. The data pipeline
# writes it (MLM labels of unmasked tokens, NER labels of non-first word pieces and padding); the
# models and losses skip it.
IGNORE_INDEX = -100

__all__ = ["IGNORE_INDEX"]
