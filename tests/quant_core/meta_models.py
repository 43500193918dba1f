"""Parameters of the models transformers builds, counted by nibble's roles: the independent count the family
tests compare nibble's inventory with (the model is built on the meta device: no memory)."""

from __future__ import annotations

from typing import Any


def parameters_by_role(model: Any, vision_prefixes: tuple[str, ...]) -> dict[str, int]:
    """The parameters of a transformers model by nibble's role, from their names: the vision tower and projector
    under `vision_prefixes`, routed experts, routers, norms, the embedding, lm_head, attention, and the rest (dense
    MLPs, shared experts) as mlp."""
    by_role: dict[str, int] = {}
    for name, parameter in model.named_parameters():
        if name.startswith(vision_prefixes):
            role = "vision"
        elif ".experts." in name:
            role = "expert"
        elif ".router." in name:
            role = "router"
        elif "norm" in name:
            role = "norm"
        elif "embed_tokens" in name:
            role = "embedding"
        elif "lm_head" in name:
            role = "lm_head"
        elif ".self_attn." in name:
            role = "attention"
        else:
            role = "mlp"
        by_role[role] = by_role.get(role, 0) + parameter.numel()
    return by_role
