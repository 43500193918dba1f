"""vLLM's dense layers of a 4-bit GPTQ checkpoint with a whole-row scale (group_size -1).

Read in the sources of vLLM 0.11.0, 0.19.0 and 0.33.0 (PyPI wheels): ``choose_mp_linear_kernel`` lists
CutlassW4A8, Machete, AllSpark (0.11, 0.19), Marlin.  AllSpark takes a whole-row group on 8.x but only 8-bit weights
(utils/allspark_utils.py ``ALLSPARK_SUPPORTED_QUANT_TYPES = [scalar_types.uint8b128]``), so int4 runs Marlin there;
Machete (9.0) takes group -1 (machete_utils.py ``query_machete_supported_group_sizes``: [-1, 64, 128]).  Marlin
(mixed_precision/marlin.py) keeps the weights and the one scale row (``num_groups = 1``) at their size and empties
the qzeros and g_idx; Machete keeps the qzeros and g_idx as loaded (0.33's AutoGPTQ creates no g_idx).
"""

from __future__ import annotations

import pytest

from quant_core.catalog import device_facts, get_preset
from quant_core.engines.base import Stage
from quant_core.engines.vllm import VllmProfile
from quant_core.engines.vllm_linear import gptq_dense_kernel

# Llama-3.1-8B: 32 layers, hidden 4096, 32 heads and 8 key/value heads of 128, MLP 14336


def _term(version: str, device: str, tensor_parallel: int) -> int | None:
    spec = get_preset("llama-3.1-8b")
    term = VllmProfile(version).linear_layout(Stage(spec, tensor_parallel, 1, (0, spec.num_layers), True),
                                              "int4-row-sym-gptq", device_facts(device))
    return None if term is None else term.bytes


def _checkpoint_extra(out_features: int, in_features: int) -> int:
    """What nibble charges of one GPTQ row-scale tensor beyond its values and its one fp16 scale row: the int32
    qzeros [1, out / 8] and g_idx [in]."""
    return out_features // 2 + 4 * in_features


@pytest.mark.parametrize("version", ["0.11", "0.19"])
def test_allspark_takes_no_4_bit_weights_so_a_whole_row_gptq_layer_runs_marlin_on_ampere(version: str) -> None:
    assert gptq_dense_kernel(version, (8, 0), 4096, 4096, -1, False, False) == "marlin"
    assert gptq_dense_kernel(version, (9, 0), 4096, 4096, -1, False, False) == "machete"


@pytest.mark.parametrize("version", ["0.11", "0.19", "0.33"])
def test_llama_3_1_8b_gptq_row_on_a100_marlin_frees_the_qzeros_and_g_idx_nibble_charged(version: str) -> None:
    # TP 1: per layer q and o (4096 x 4096), k and v (1024 x 4096), gate and up (14336 x 4096), down (4096 x 14336)
    per_layer = (2 * _checkpoint_extra(4096, 4096) + 2 * _checkpoint_extra(1024, 4096)
                 + 2 * _checkpoint_extra(14336, 4096) + _checkpoint_extra(4096, 14336))
    assert per_layer == 177_152
    # 0.11 and 0.19 keep a Marlin workspace on each of the 4 fused layers (MarlinLinearKernel: 108 int32 on an A100,
    # marlin_make_workspace_new), 0.33 none: 4 x 432 = 1,728 a layer
    workspace = 1_728 if version != "0.33" else 0
    assert _term(version, "a100-80gb", 1) == -32 * (per_layer - workspace)  # None (charged) before
    assert _term("0.33", "a100-80gb", 1) == -5_668_864 and _term("0.19", "a100-80gb", 1) == -5_613_568
    # TP 2: vLLM holds 54,525,952 bytes of values and 2 x (3072 + 4096 + 14336 + 4096) = 51,200 of scales a layer,
    # nibble's ceil(bytes / 2) of each checkpoint tensor 54,657,536: -80,384 a layer (and the workspaces)
    assert _term(version, "a100-80gb", 2) == -32 * (80_384 - workspace)
    assert _term("0.33", "a100-80gb", 2) == -2_572_288


def test_llama_3_1_8b_gptq_row_on_h100_machete_keeps_one_g_idx_per_fused_layer() -> None:
    # 0.19, TP 1: Machete keeps qzeros and g_idx as loaded, one g_idx [4096] for qkv_proj and one for gate_up_proj
    # where nibble charged q, k, v's and gate, up's: 4 x 4096 x (2 + 1) = 49,152 a layer less
    assert _term("0.19", "h100-80gb", 1) == -32 * 49_152 == -1_572_864
    # 0.33 (AutoGPTQLinearMethod creates no g_idx): 4 x (4 x 4096 + 2 x 4096 + 14336) = 155,648 a layer less
    assert _term("0.33", "h100-80gb", 1) == -32 * 155_648 == -4_980_736
