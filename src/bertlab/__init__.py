"""bertlab: train BERT models end to end on Lightning and Hydra."""

__version__ = "0.1.0"
