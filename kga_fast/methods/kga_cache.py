"""What unlearning computes once and then only looks up: the frozen teachers' outputs and the
features of A*'s frozen prefix.

Both are exact because unlearning uses no augmentation. The teachers A_d, A_f, A_n are frozen
and in eval mode, so A_d(x), A_f(y) and KL(A_d(z) || A_n(z)) are constants per image. The
frozen prefix of A* (the stem and the leading frozen blocks: A_d's, in eval mode, never
updated) maps an image to the same features in every epoch, so with blocks (1,2,3) frozen a
step runs only the last block and the head. Every batch carries its images' positions
(DeviceLoader's idx), so a cached row is looked up instead of recomputed. Computing the caches
is one forward pass over each set, counted in the unlearning time.
"""

from __future__ import annotations

import torch

from kga_fast import accel
from kga_fast.data import DeviceLoader
from kga_fast.evaluation.evaluate import predict
from kga_fast.losses import kl_rows
from kga_fast.methods.common import UnlearnData
from kga_fast.models import StagedNet


class Teachers:
    """Outputs of the frozen teachers for a batch: cached tensors indexed by position (computed
    once by evaluate.predict, whole set on every process), or the models run on the batch.
    `retain=False`: A_d's outputs on D_r are not cached (a retain loss that does not read them)."""

    def __init__(
        self, models: dict[str, StagedNet], data: UnlearnData, accelerator, cached: bool, impl, retain=True
    ):
        self.models, self.accelerator, self.cached, self.impl = models, accelerator, cached, impl
        for m in models.values():
            m.eval().requires_grad_(False)
        if cached:

            def logits(name: str, images: torch.Tensor) -> torch.Tensor:  # (N, K) on the device
                out = predict(models[name], images, mean=data.mean, std=data.std, accelerator=accelerator)
                return out.to(accelerator.device)

            self.retain_logits = logits("Ad", data.retain) if retain else None  # (N_r, K)
            self.forget_logits = logits("Af", data.forget)  # (N_f, K)
            new_ad, new_an = logits("Ad", data.new), logits("An", data.new)
            self.new_gap = kl_rows(new_ad, new_an, impl=impl)  # (N_n,) KL(A_d || A_n)

    @torch.no_grad()
    def _forward(self, name: str, x: torch.Tensor) -> torch.Tensor:  # as predict() computes it
        with self.accelerator.autocast():
            return self.models[name](x).float()  # (B, K)

    def retain(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return self.retain_logits[idx] if self.cached else self._forward("Ad", x)

    def forget(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return self.forget_logits[idx] if self.cached else self._forward("Af", x)

    def gap(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        if self.cached:
            return self.new_gap[idx]
        return kl_rows(self._forward("Ad", x), self._forward("An", x), impl=self.impl)


class PrefixCache:
    """Features of A*'s frozen prefix (the output of the stem and the first `start` blocks) for
    every image of D_r and D_f, on the device, when they fit in `limit_gb` GiB; otherwise, or
    with no frozen prefix, the prefix runs on each batch as usual.

    `inputs(name, x, idx)` gives what to feed A*: `student(*inputs)` = `student(x)` either way.
    Every process holds the whole sets (its shard changes every epoch).
    """

    def __init__(self, student: StagedNet, data: UnlearnData, accelerator, limit_gb: float):
        self.start, self.sets, self.skipped = student.frozen_prefix(), {}, ""
        if not self.start or limit_gb <= 0:
            return
        layout = accel.channels_last(accelerator)

        @torch.no_grad()
        def features(images: torch.Tensor) -> torch.Tensor:  # (N, C', H', W') on the device
            loader = DeviceLoader(
                images,
                torch.zeros(len(images), dtype=torch.int64),
                batch_size=512,
                mean=data.mean,
                std=data.std,
                shuffle=False,
                seed=0,
                device=accelerator.device,
                channels_last=layout,
            )
            out = None
            with accelerator.autocast():
                for x, _, idx in loader:
                    h = student.prefix(x, self.start)  # (B, C', H', W')
                    if out is None:
                        out = torch.empty((len(images), *h.shape[1:]), dtype=h.dtype, device=h.device)
                        if layout:
                            out = out.contiguous(memory_format=torch.channels_last)
                    out[idx] = h
            return out

        # Frozen blocks are always in eval mode (StagedNet.train), so these are the features
        # every training step would compute.
        probe = features(data.retain[:1])  # (1, C', H', W')
        need = probe.element_size() * probe.numel() * (len(data.retain) + len(data.forget))
        if need > limit_gb * 2**30:
            self.skipped = (
                f"the frozen-prefix cache would need {need / 2**30:.1f} GiB, more than "
                f"its limit of {limit_gb:g} GiB (--prefix-cache-gb): the prefix runs every batch"
            )
            return
        self.sets = {"retain": features(data.retain), "forget": features(data.forget)}

    def inputs(self, name: str, x: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(images x, 0), or (the cached features of positions idx, start)."""
        if name in self.sets:
            return self.sets[name][idx], self.start
        return x, 0
