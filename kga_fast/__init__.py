"""kga_fast: machine unlearning of image classifiers with Knowledge Gap Alignment (KGA)."""

__version__ = "0.1.0"
