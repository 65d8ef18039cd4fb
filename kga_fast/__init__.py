"""kga_fast: machine unlearning of image classifiers with Knowledge Gap Alignment (KGA).

from kga_fast import unlearn_model         # the Python API (kga_fast.api)
from kga_fast import forgetting_quality    # the NeurIPS 2023 challenge's score (kga_fast.evaluation.forgetting)
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "unlearn_model":  # imported on first use: `import kga_fast` stays light
        from kga_fast.api import unlearn_model

        return unlearn_model
    if name == "forgetting_quality":
        from kga_fast.evaluation.forgetting import forgetting_quality

        return forgetting_quality
    raise AttributeError(f"module 'kga_fast' has no attribute {name!r}")
