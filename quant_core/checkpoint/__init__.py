"""Whole-checkpoint quantization: a sharded safetensors checkpoint in, one engines load out, a tensor at a time.

`open_checkpoint` validates a directory (index, shards, files) and lists its
tensors; `plan_checkpoint` decides each tensor's fate under
`CheckpointOptions`; `quantize_tensor_part` does one tensor (what a job's
worker runs); `output_shards`, `write_output_shard`, `write_checkpoint_files`
and `write_gguf_output` assemble the result; `quantize_checkpoint` runs all of
it in this process; `inspect_source`, `load_plan`, `timed_tensor_part` and
`finish_output` (job_steps.py) are a job's steps, each run by name in a worker.
`split_fused_groups` (fused_groups.py) finds the layers vLLM fuses that a plan
stores in part, which `engine_notes` reports.
Under a budget, `measure_tensor` and `choose_formats`
(budget.py) give each tensor its format first, the parts of each layer vLLM
fuses (`fused_layers`) as one; `attach_importance` gives the plans their
importance statistics.
"""

from quant_core.checkpoint.budget import (
    attach_importance,
    candidate_formats,
    check_budget,
    choose_formats,
    measure_and_choose,
    measure_tensor,
    without_statistics,
)
from quant_core.checkpoint.fused_groups import (
    VLLM_PACKED_MODULES,
    SplitGroup,
    fused_layers,
    split_between,
    split_fused_groups,
    split_group_notes,
    vllm_packed_modules,
)
from quant_core.checkpoint.job_steps import finish_output, inspect_source, load_plan, timed_tensor_part
from quant_core.checkpoint.output import (
    GGUF_NAME,
    REPORT_NAME,
    OutputShard,
    OutputTensor,
    build_report,
    encode_tensor,
    engine_notes,
    output_shards,
    part_path,
    passthrough_entry,
    quantization_config,
    quantize_checkpoint,
    quantize_tensor_bytes,
    quantize_tensor_part,
    valid_parts,
    write_checkpoint_files,
    write_gguf_output,
    write_output_shard,
    write_part,
)
from quant_core.checkpoint.plan import (
    DEFAULT_EXCLUDE,
    DEFAULT_MAX_SHARD_BYTES,
    OUTPUTS,
    CheckpointOptions,
    CheckpointOutput,
    TensorPlan,
    check_options,
    plan_checkpoint,
)
from quant_core.checkpoint.source import (
    CONFIG_NAME,
    INDEX_NAME,
    SINGLE_NAME,
    Checkpoint,
    CheckpointError,
    CheckpointTensor,
    open_checkpoint,
    read_tensor,
)

__all__ = [
    "CONFIG_NAME",
    "DEFAULT_EXCLUDE",
    "DEFAULT_MAX_SHARD_BYTES",
    "GGUF_NAME",
    "INDEX_NAME",
    "OUTPUTS",
    "REPORT_NAME",
    "SINGLE_NAME",
    "VLLM_PACKED_MODULES",
    "Checkpoint",
    "CheckpointError",
    "CheckpointOptions",
    "CheckpointOutput",
    "CheckpointTensor",
    "OutputShard",
    "OutputTensor",
    "SplitGroup",
    "TensorPlan",
    "attach_importance",
    "build_report",
    "candidate_formats",
    "check_budget",
    "check_options",
    "choose_formats",
    "encode_tensor",
    "engine_notes",
    "finish_output",
    "fused_layers",
    "inspect_source",
    "load_plan",
    "measure_and_choose",
    "measure_tensor",
    "open_checkpoint",
    "output_shards",
    "part_path",
    "passthrough_entry",
    "plan_checkpoint",
    "quantization_config",
    "quantize_checkpoint",
    "quantize_tensor_bytes",
    "quantize_tensor_part",
    "read_tensor",
    "split_between",
    "split_fused_groups",
    "split_group_notes",
    "timed_tensor_part",
    "valid_parts",
    "vllm_packed_modules",
    "without_statistics",
    "write_checkpoint_files",
    "write_gguf_output",
    "write_output_shard",
    "write_part",
]
