"""The penultimate-features pass: a forward hook on a model's final ``nn.Linear`` keeps its input,
so one forward pass gives features and logits. Shared by the exporter (``export_features``) and the
trainer's per-epoch eta (``eta_monitor``); it lives below both so neither imports the other."""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Optional, Tuple

import torch

from vision_plugin.batching import bad_image_error
from vision_plugin.models import find_final_linear

__all__ = ["PenultimateCapture", "penultimate_batches"]


class PenultimateCapture:
    """Forward hook on the final ``nn.Linear``: keeps the last batch's input (the penultimate
    features) so one forward pass yields both features and logits."""

    def __init__(self, model: torch.nn.Module):
        self.layer_name, self.layer = find_final_linear(model)
        self.features: Optional[torch.Tensor] = None
        self._handle = self.layer.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output) -> None:
        self.features = inputs[0].detach()

    def remove(self) -> None:
        self._handle.remove()


def penultimate_batches(model: torch.nn.Module, loader: Iterable[Any], device: torch.device
                        ) -> Iterator[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(features [B, D], logits [B, K], target [B])`` per batch of ``loader`` in its order, the
    features captured at the final ``nn.Linear``'s input. The one features pass of the export and of
    the trainer's per-epoch eta (``vision_plugin.eta_monitor``); every sample is required, so an
    unreadable image raises. ``model`` must already be in eval mode on ``device``."""
    capture = PenultimateCapture(model)
    try:
        with torch.inference_mode():
            for batch in loader:
                if batch.bad:  # a features file must hold every sample: no skipping
                    raise bad_image_error(batch.bad[0])
                output = model(batch.images.to(device, non_blocking=True))
                logits = output if isinstance(output, torch.Tensor) else output[0]
                assert capture.features is not None  # the hook ran during the forward pass
                yield capture.features.flatten(1), logits, batch.target
    finally:
        capture.remove()
