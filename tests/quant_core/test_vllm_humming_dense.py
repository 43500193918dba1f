"""vLLM 0.33's dense int4 layers on Humming's kernels where Machete refuses them (compute capability 9.0).

Read in vLLM 0.33.0 and humming-kernels 0.1.19 (its pinned dependency): ``choose_mp_linear_kernel`` tries
CutlassW4A8, Machete, then Humming (``prioritize_humming`` puts it ahead of Marlin on 9.0).  Machete takes groups
-1, 64 and 128 and a rank's in features a multiple of 64, out features of 128.  HummingLinearKernel's
``prepare_humming_linear_layer_config`` pads N (the fused layer's summed outputs) to 256 and K to 128 and keeps the
int32 weight (``n x k / 2`` bytes), 16-bit scales ``n x k / g`` and, for a checkpoint with zero points, int32 zero
points ``n / 8 x k / g``; it deletes every other parameter (a symmetric GPTQ checkpoint's qzeros) and
``create_humming_locks`` adds ``8 x SMs`` int32 locks a layer (H100 SXM: 132 SMs, 4,224 bytes).
"""

from __future__ import annotations

from quant_core.catalog import device_facts, get_preset
from quant_core.engines.base import Stage
from quant_core.engines.vllm import VllmProfile
from quant_core.engines.vllm_linear import humming_linear_bytes

LOCKS = 4 * 8 * 132


def _term(spec_name: str, label: str, tensor_parallel: int) -> int | None:
    spec = get_preset(spec_name)
    term = VllmProfile("0.33").linear_layout(Stage(spec, tensor_parallel, 1, (0, spec.num_layers), True), label,
                                             device_facts("h100-80gb"))
    return None if term is None else term.bytes


def _gptq(out_features: int, in_features: int, group: int) -> int:
    """A GPTQ checkpoint tensor: int32 qweight, fp16 scales, int32 qzeros, int32 g_idx."""
    groups = in_features // group
    return in_features * out_features // 2 + 2 * groups * out_features + groups * out_features // 2 + 4 * in_features


def test_humming_pads_n_to_256_and_k_to_128_and_adds_its_locks() -> None:
    # Llama-3.2-1B's qkv_proj at TP 8: 2048 in, (4 + 2) x 64 = 384 out -> 512 x 2048; g32: 64 scale groups
    assert humming_linear_bytes(2048, 384, 32, False, False, device_facts("h100-80gb")) == (
        512 * 2048 // 2 + 2 * 512 * 64 + LOCKS) == 594_048


def test_llama_3_2_1b_gptq_g32_at_tp_8_holds_the_padded_rows_nibble_did_not_charge() -> None:
    # Per layer on one rank: qkv 512 x 2048 (594,048), o 2048 x 256 (262,144 + 32,768 + locks), gate_up 2048 x 2048
    # (2,097,152 + 262,144 + locks), down 2048 x 1024 (1,048,576 + 131,072 + locks): 4,440,576, against nibble's
    # ceil(bytes / 8) of q, k, v, o, gate, up, down: 4,405,248.  35,328 x 16 layers = 565,248 bytes a rank vLLM
    # holds and nibble did not charge (no term before: Humming "not read")
    held = 594_048 + (262_144 + 32_768 + LOCKS) + (2_097_152 + 262_144 + LOCKS) + (1_048_576 + 131_072 + LOCKS)
    charged = (2 * _gptq(2048, 2048, 32) // 8 + 2 * _gptq(512, 2048, 32) // 8 + 2 * _gptq(8192, 2048, 32) // 8
               + _gptq(2048, 8192, 32) // 8)
    assert (held, charged) == (4_440_576, 4_405_248)
    assert _term("llama-3.2-1b-instruct", "int4-g32-sym-gptq", 8) == 16 * (held - charged) == 565_248


def test_llama_3_1_8b_gptq_g32_on_humming_frees_the_qzeros_and_g_idx() -> None:
    # TP 1, nothing padded (6144, 4096, 28672 and 4096 out; 4096 and 14336 in): vLLM holds 109,051,904 bytes of
    # values, 13,631,488 of scales and 4 x 4,224 of locks a layer, nibble charged the checkpoint's 126,246,912
    held = 109_051_904 + 13_631_488 + 4 * LOCKS
    charged = (2 * _gptq(4096, 4096, 32) + 2 * _gptq(1024, 4096, 32) + 2 * _gptq(14336, 4096, 32)
               + _gptq(4096, 14336, 32))
    assert charged == 126_246_912
    assert _term("llama-3.1-8b", "int4-g32-sym-gptq", 1) == 32 * (held - charged) == -113_491_968


def test_llama_3_1_8b_awq_g32_on_humming_keeps_its_zero_points_and_adds_the_locks() -> None:
    # Machete takes no group 32: every layer runs Humming, unpadded, whose values, scales and zero points keep the
    # checkpoint's bytes; the four lock buffers a layer are what it holds more (machete_zero_point_bytes: no term
    # before, a layer falling to Humming was "not read")
    assert _term("llama-3.1-8b", "int4-g32-asym-awq", 1) == 32 * 4 * LOCKS == 540_672


def test_symmetric_compressed_tensors_on_humming_holds_the_padded_rows_and_the_locks() -> None:
    # Llama-3.2-1B, g32 at TP 8: qkv 384 -> 512 rows: 594,048 against 2048 x 384 / 2 + 2 x 64 x 384 = 442,368;
    # o, gate_up and down unpadded, their locks only: (151,680 + 3 x 4,224) x 16 layers = 2,629,632 bytes a rank
    # nibble did not charge (no term before: compressed-tensors' dense layers had none)
    assert _term("llama-3.2-1b-instruct", "int4-g32-sym-compressed-tensors", 8) == (
        16 * (594_048 - 442_368 + 3 * LOCKS)) == 2_629_632
    # g128 at TP 1: Machete takes every layer (the checkpoint's bytes): no term
    assert _term("llama-3.1-8b", "int4-g128-sym-compressed-tensors", 1) is None
