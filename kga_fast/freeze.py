"""Layer freezing in the paper's notation: (0) nothing, (1), (1,2), (1,2,3), any subset.

Frozen means frozen: no gradient (requires_grad False, so not in the optimizer and DDP
does not wait for it), BatchNorm in eval mode (StagedNet.train keeps it there), and when
the frozen blocks are a prefix, no autograd graph through them at all.
"""

from __future__ import annotations

from kga_fast.errors import UserError
from kga_fast.models import StagedNet, block_names


def parse_freeze(spec: str | list[int] | tuple[int, ...], arch: str) -> tuple[int, ...]:
    """'0' -> (), '1,2' -> (1, 2): 1-based block numbers, validated against the arch."""
    if isinstance(spec, str):
        parts = [p.strip() for p in spec.strip("()").split(",") if p.strip()]
        try:
            numbers = [int(p) for p in parts]
        except ValueError:
            raise UserError(
                f"bad freeze spec {spec!r}: use 0 or comma-separated block numbers like 1,2,3"
            ) from None
    else:
        numbers = [int(p) for p in spec]
    if numbers == [0] or not numbers:
        return ()
    n_blocks = len(block_names(arch))
    bad = [b for b in numbers if not 1 <= b <= n_blocks]
    if bad:
        raise UserError(f"freeze block {bad[0]} out of range for {arch}: it has blocks 1..{n_blocks}")
    if len(set(numbers)) != len(numbers):
        raise UserError(f"freeze spec {spec!r} names a block twice")
    return tuple(sorted(numbers))


def freeze_label(blocks: tuple[int, ...]) -> str:
    """The paper's superscript: (0), (1), (1,2), ..."""
    return "(" + (",".join(map(str, blocks)) if blocks else "0") + ")"


def apply_freeze(model: StagedNet, blocks: tuple[int, ...]) -> StagedNet:
    """Freeze the given 1-based blocks of `model` in place (block 1 includes the stem)."""
    model.frozen = tuple(b - 1 for b in blocks)
    for i, block in enumerate(model.blocks):
        frozen = i in model.frozen
        for p in block.parameters():
            p.requires_grad_(not frozen)
    for p in model.stem.parameters():
        p.requires_grad_(0 not in model.frozen)
    model.train(model.training)  # re-apply eval mode on frozen blocks
    return model
