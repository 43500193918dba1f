"""What the model-family tests share: the parameters of the models transformers builds, counted by nibble's roles
(the independent count they compare the inventory with; built on the meta device, no memory), tiny checkpoints
saved by transformers, the vision tower's place in a pipeline plan, and a checkpoint job's plan and output."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from quant_core.checkpoint import Checkpoint, CheckpointOptions, TensorPlan, open_checkpoint, plan_checkpoint
from quant_core.checkpoint_rows import checkpoint_scheme
from quant_core.inventory import inventory, parameter_count
from quant_core.planner import Hardware, PlanOptions, Workload, plan
from quant_core.schemes import WeightScheme
from quant_core.specs import ModelSpec
from quant_core.tensorio.checkpoint_headers import HeaderTensor
from quant_core.tensorio.safetensors_io import read_safetensors


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


def planned_job(source: Path, output: str) -> tuple[Checkpoint, CheckpointOptions, list[TensorPlan], dict[str, str]]:
    """A checkpoint job's plan for `source` at group size 32 into `output`, with each tensor's pass-through reason
    ("" for a tensor it quantizes)."""
    checkpoint = open_checkpoint(source)
    options = CheckpointOptions(output=output, group_size=32)  # type: ignore[arg-type]
    plans = plan_checkpoint(checkpoint, options)
    return checkpoint, options, plans, {plan.tensor.name: plan.reason or "" for plan in plans}


def output_tensors(folder: Path) -> dict[str, Any]:
    """Every tensor of the safetensors shards a job wrote to `folder`."""
    stored: dict[str, Any] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        stored.update(read_safetensors(shard))
    return stored


def saved_by_transformers(folder: Path, config_class: str, model_class: str, config: Mapping[str, Any],
                          **overrides: Any) -> Path:
    """A random model of transformers' `model_class` for `config` (its own ``model_type`` and ``architectures``
    left to the class), saved to `folder` as transformers writes checkpoints: the names and shapes engines load."""
    import torch
    import transformers

    torch.manual_seed(0)
    keys = {key: value for key, value in config.items() if key not in ("architectures", "model_type")}
    model = getattr(transformers, model_class)(getattr(transformers, config_class)(**keys, **overrides))
    model.save_pretrained(folder)
    return folder


def tower_bytes_by_stage(spec: ModelSpec, headers: list[HeaderTensor],
                         prefixes: tuple[str, ...]) -> tuple[int, list[int]]:
    """The vision tower's bytes among a checkpoint's `headers` (the tensors under `prefixes`), and what it adds to
    each stage's weights in a two-stage pipeline plan from those headers."""
    text = [tensor for tensor in headers if not tensor.name.startswith(prefixes)]

    def stage_weights(tensors: list[HeaderTensor]) -> list[int]:
        scheme, _ = checkpoint_scheme(spec, tensors, mtp_layers=0)
        result = plan(spec, Hardware(80 << 30, 2), Workload(1024, 1), PlanOptions(scheme=scheme, pipeline_parallel=2))
        return [device.weights_bytes for device in result.primary.devices]

    added = [w - t for w, t in zip(stage_weights(headers), stage_weights(text), strict=True)]
    return sum(tensor.bytes for tensor in headers) - sum(tensor.bytes for tensor in text), added


def built_on_meta(config: Mapping[str, Any]) -> Any:
    """The causal LM transformers builds for `config`, on the meta device (skipped without torch/transformers)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**config))


def tensor_names(spec: ModelSpec) -> set[str]:
    """Every tensor name of `spec`'s inventory, each layer's rows written out."""
    return {entry.name.replace("{i}", str(layer)) for entry in inventory(spec) for layer in entry.layers or (-1,)}


def stored_bytes_by_role(scheme: WeightScheme) -> dict[str, int]:
    """The bytes a checkpoint's rows store, by role (each row's bytes times the layers it stands for)."""
    by_role: dict[str, int] = {}
    for entry, size in scheme.checkpoint_rows:
        by_role[entry.role] = by_role.get(entry.role, 0) + size * entry.count
    return by_role


def vision_rows_are_on_no_layer(scheme: WeightScheme) -> bool:
    """Whether every vision row of `scheme` is held outside the decoder layers (whole on every pipeline stage)."""
    return all(entry.layers == () for entry, _ in scheme.checkpoint_rows if entry.role == "vision")


def fp32_bytes_by_role(spec: ModelSpec) -> dict[str, int]:
    """nibble's parameter count of `spec` by role at 4 bytes each (the fp32 checkpoints transformers saves in the
    tests), roles without parameters left out."""
    return {role: 4 * size for role, size in parameter_count(spec).by_role.items() if size}
