"""How large an edit is next to the activations it edits.

A coefficient means nothing on its own: a unit-norm PCA direction needs a coefficient near
the hidden state's norm, a mean-difference vector much less, and 1e30 of either wipes the
signal out (the layer norm then returns zeros, and the model writes nothing). The ratio of
an edit's norm to the typical hidden-state norm at its layer is the figure to judge by.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.generation import left_pad, positions_from_mask
from engine.models import LoadedModel


def hidden_state_norms(model: LoadedModel, prompts: Sequence[str]) -> list[float]:
    """Mean L2 norm of each decoder layer's output over the prompts' tokens (padding excluded)."""
    encoded = [model.tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
    ids, mask = left_pad(model, encoded)
    captured: dict[int, torch.Tensor] = {}

    def keep(index: int) -> object:
        def hook(_module: object, _inputs: object, output: object) -> None:
            hidden = output[0] if isinstance(output, tuple) else output
            assert isinstance(hidden, torch.Tensor)
            captured[index] = hidden.detach().float().norm(dim=-1)

        return hook

    handles = [layer.register_forward_hook(keep(i)) for i, layer in enumerate(model.layers)]  # type: ignore[arg-type]
    try:
        with model.lock, torch.no_grad():
            model.model(
                input_ids=ids.to(model.device),
                attention_mask=mask.to(model.device),
                position_ids=positions_from_mask(mask).to(model.device),
                use_cache=False,
            )
    finally:
        for handle in handles:
            handle.remove()
    weights = mask.to(torch.float32)
    return [float((captured[i].cpu() * weights).sum() / weights.sum()) for i in range(len(model.layers))]
