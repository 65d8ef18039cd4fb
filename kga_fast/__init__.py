"""kga_fast: machine unlearning of image classifiers with Knowledge Gap Alignment (KGA).

from kga_fast import unlearn_model   # the Python API (kga_fast.api)
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "unlearn_model":  # imported on first use: `import kga_fast` stays light
        from kga_fast.api import unlearn_model

        return unlearn_model
    raise AttributeError(f"module 'kga_fast' has no attribute {name!r}")
