"""Kernel choices from the device's compute capability and SM count, as vLLM's code makes them, so that a device
given in bytes with a capability is planned as the catalog device of that capability.

vLLM tests the capability, never the device's name: ``is_device_capability(90)`` (exactly 9.0),
``is_device_capability_family(100)`` (any 10.x), ``has_device_capability((7, 5))`` (7.5 or above), tuple ranges such
as ``(9, 0) <= capability < (11, 0)`` (vllm/platforms/interface.py and each kernel's ``_supports_current_device``).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from quant_core.catalog import (
    UNKNOWN_DEVICE,
    DeviceFacts,
    device_facts,
    get_device,
    get_preset,
    get_preset_info,
    list_devices,
)
from quant_core.engines.vllm import VllmProfile
from quant_core.engines.vllm_attention import attention_backend_name, kv_backend
from quant_core.engines.vllm_expert_layouts import mxfp4_moe_backend
from quant_core.engines.vllm_linear import gptq_dense_kernel
from quant_core.engines.vllm_sampler import flashinfer_sampler_supported, sampler_pass_bytes
from quant_core.errors import InvalidSpec
from quant_core.planner import Hardware, Plan, PlanOptions, Workload, plan
from quant_core.schemes import scheme_from_quantization_config

RELEASES = ("0.11", "0.19", "0.33")
#: Qwen/Qwen3-30B-A3B-FP8's quantization_config: 128 x 128 block fp8, whose experts vLLM 0.11 runs on DeepGEMM on 9.0
#: and 10.0
QWEN3_30B_A3B_FP8 = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                     "weight_block_size": [128, 128]}


def _plan(model: str, hardware: Hardware, release: str) -> Plan:
    info = get_preset_info(model)
    config = QWEN3_30B_A3B_FP8 if model == "qwen3-30b-a3b" else info.quantization_config
    scheme = None if config is None else scheme_from_quantization_config(config)
    return plan(info.spec, hardware, Workload(8192, 4), PlanOptions(engine_version=release, scheme=scheme))


@pytest.mark.parametrize("release", RELEASES)
@pytest.mark.parametrize(("device_id", "capability"), [("h100-80gb", (9, 0)), ("gb200", (10, 0)),
                                                      ("gh200-96gb", (9, 0))])
@pytest.mark.parametrize("model", ["llama-3.1-8b", "gpt-oss-20b", "qwen3-30b-a3b"])
def test_a_device_given_in_bytes_with_a_capability_is_planned_as_the_catalog_device(
        release: str, device_id: str, capability: tuple[int, int], model: str) -> None:
    # the catalog device's memory and capability, no id: the same kernels (gpt-oss's MXFP4 backend and its layout,
    # 0.11's DeepGEMM for block fp8 on 9.0 and 10.0, the sampler path, the cuBLAS workspace), the same SM count (the
    # most of the catalog's devices of the same major capability: 132 on 9.x, the GB200's 152 on 10.x), so the same
    # figures; only the hardware's name and, where the SM count sizes a buffer (0.19's Triton top-k/top-p), the basis
    # differ (a B200 given in bytes is charged the GB200's 152 SMs, not its own 148: the safe side)
    device = get_device(device_id)
    catalog = _plan(model, Hardware(device.planning_bytes, 1, device.id, device.name), release)
    custom = _plan(model, Hardware(device.planning_bytes, 1, None, "custom", capability), release)
    assert custom.activation.bytes == catalog.activation.bytes
    assert custom.primary.kv_capacity_tokens == catalog.primary.kv_capacity_tokens
    assert replace(custom, hardware=catalog.hardware, activation=catalog.activation) == catalog
    if "Triton top-k/top-p" in custom.activation.basis:
        assert "count not given" in custom.activation.basis


#: the devices added in the twenty-third and twenty-fifth sessions and the catalog device of the same compute
#: capability that vLLM has been read against: vLLM tests the capability (and the SM count where a buffer is sized by
#: it), never the name
ADDED_DEVICES = (("a800-80gb", "a100-80gb"), ("l20", "l40s"), ("a40", "a10"))


@pytest.mark.parametrize("release", RELEASES)
@pytest.mark.parametrize(("device_id", "twin"), ADDED_DEVICES)
@pytest.mark.parametrize("model", ["llama-3.1-8b", "gpt-oss-20b", "qwen3-30b-a3b"])
def test_an_added_device_is_planned_as_a_device_of_its_twins_capability_and_its_own_sm_count(
        release: str, device_id: str, twin: str, model: str) -> None:
    # the A800 plans as an 8.0 device (the A100's GA100: Marlin for MXFP4, no DeepGEMM, no Machete), the L20 as an
    # 8.9 one (the L40S's AD102), the A40 as an 8.6 one (the A10's GA102); each with its own memory and SM count (108,
    # 92, 84), given here in bytes
    device, other = get_device(device_id), get_device(twin)
    assert device.compute_capability == other.compute_capability
    catalog = _plan(model, Hardware(device.planning_bytes, 1, device.id, device.name), release)
    custom = _plan(model, Hardware(device.planning_bytes, 1, None, "custom", other.compute_capability,
                                   device.compute_units), release)
    assert replace(custom, hardware=catalog.hardware) == catalog


@pytest.mark.parametrize(("device_id", "twin"), ADDED_DEVICES)
def test_an_added_device_picks_its_twins_kernels(device_id: str, twin: str) -> None:
    facts, other = device_facts(device_id), device_facts(twin)
    capability = get_device(device_id).compute_capability
    assert capability is not None and capability < (9, 0)
    for release in RELEASES:
        # quantization/mxfp4.py: below 9.0 neither OpenAI's Triton kernels nor FlashInfer's bf16 MXFP4 run: Marlin
        assert mxfp4_moe_backend(release, facts) == mxfp4_moe_backend(release, other) == "marlin"
        # choose_mp_linear_kernel: Machete is 9.0 only, so a GPTQ 4-bit g128 layer runs on Marlin
        assert gptq_dense_kernel(release, capability, 4096, 4096, 128, False, False) == "marlin"
    assert gptq_dense_kernel("0.19", (9, 0), 4096, 4096, 128, False, False) == "machete"  # the check can fail
    # FlashInfer's top-k/top-p sampler: 8.0 to 12.1 with more than 16 SMs
    assert flashinfer_sampler_supported(facts) and flashinfer_sampler_supported(other)


@pytest.mark.parametrize("release", RELEASES)
@pytest.mark.parametrize("model", ["llama-3.1-8b", "gpt-oss-20b", "qwen3-30b-a3b", "deepseek-v2-lite"])
def test_the_b300_is_planned_as_a_10_3_device_with_its_148_sms(release: str, model: str) -> None:
    device = get_device("b300")
    assert (device.compute_capability, device.compute_units) == ((10, 3), 148)
    catalog = _plan(model, Hardware(device.planning_bytes, 1, device.id, device.name), release)
    custom = _plan(model, Hardware(device.planning_bytes, 1, None, "custom", (10, 3), 148), release)
    assert replace(custom, hardware=catalog.hardware) == catalog


def test_the_b300_leaves_the_b200s_kernels_where_0_11_tests_10_0_exactly_and_shares_them_from_0_19() -> None:
    # 0.11 tests is_device_capability(100), 10.0 exactly: platforms/cuda.py (FlashInfer and CUTLASS MLA),
    # quantization/mxfp4.py get_mxfp4_backend (FlashInfer's TRT-LLM MXFP4), utils/deep_gemm.py
    # is_deep_gemm_supported; 0.19 and 0.33 the 10.x family: _get_backend_priorities (device_capability.major == 10),
    # CutlassMLA/FlashInferMLA supports_compute_capability (major == 10), is_device_capability_family(100)
    b300, b200 = device_facts("b300"), device_facts("b200")
    assert [mxfp4_moe_backend(release, b300) for release in RELEASES] == ["marlin", "trtllm", "trtllm-0.33"]
    assert [mxfp4_moe_backend(release, b200) for release in RELEASES] == ["trtllm", "trtllm", "trtllm-0.33"]
    mla, dense = get_preset("deepseek-v2-lite"), get_preset("llama-3.1-8b")
    on_b300, on_b200 = kv_backend("0.11", mla, "auto", (10, 3)), kv_backend("0.11", mla, "auto", (10, 0))
    assert on_b300 is not None and on_b200 is not None
    assert (on_b300.backend, on_b300.block_size) == ("TRITON_MLA", None)
    assert (on_b200.backend, on_b200.block_size) == ("CUTLASS_MLA", 128)
    fp8_mla = kv_backend("0.11", mla, "fp8_e4m3", (10, 3))  # TritonMLA takes no fp8 cache in 0.11
    assert fp8_mla is not None and fp8_mla.backend is None and "TritonMLA" in fp8_mla.basis
    fp8_b300, fp8_b200 = kv_backend("0.11", dense, "fp8_e4m3", (10, 3)), kv_backend("0.11", dense, "fp8_e4m3", (10, 0))
    assert fp8_b300 is not None and fp8_b300.backend == "TRITON_ATTN"
    assert fp8_b200 is not None and fp8_b200.backend == "FLASHINFER"
    for release in ("0.19", "0.33"):
        for spec in (mla, dense):
            for cache in ("auto", "fp8_e4m3"):
                assert (attention_backend_name(release, spec, cache, (10, 3))
                        == attention_backend_name(release, spec, cache, (10, 0))), (release, spec.name, cache)
    # block-fp8 experts: 0.11 runs DeepGEMM's E8M0 path on 10.0 whatever the width (its workspace kept), Triton's
    # fused_experts on 10.3 (its caches freed after each layer); 0.19 and 0.33 the same on both
    size = get_device("b200").planning_bytes
    for release in RELEASES:
        ten_0 = _plan("qwen3-30b-a3b", Hardware(size, 1, None, "custom", (10, 0), 148), release)
        ten_3 = _plan("qwen3-30b-a3b", Hardware(size, 1, None, "custom", (10, 3), 148), release)
        if release == "0.11":
            assert "DeepGemmExperts" in ten_0.activation.basis and "DeepGemm" not in ten_3.activation.basis
            assert ten_3.activation.bytes < ten_0.activation.bytes
        else:
            assert replace(ten_0, hardware=ten_3.hardware) == ten_3


def test_the_plans_without_a_capability_differ_so_the_test_above_can_fail() -> None:
    # without the capability nothing is known: no MXFP4 layout term, the most SMs of all NVIDIA devices (188)
    device = get_device("h100-80gb")
    catalog = _plan("gpt-oss-20b", Hardware(device.planning_bytes, 1, device.id, device.name), "0.19")
    unknown = _plan("gpt-oss-20b", Hardware(device.planning_bytes, 1, None, "custom"), "0.19")
    assert unknown.primary.kv_capacity_tokens != catalog.primary.kv_capacity_tokens


@pytest.mark.parametrize(("capability", "backends"), [
    # (0.11, 0.19, 0.33); quantization/mxfp4.py get_min_capability 80: below 8.0 MXFP4 is refused, no backend
    ((7, 5), ("", "", "")),
    # 8.x: OpenAI's Triton kernels need 9.0, FlashInferExperts' bf16 MXFP4 needs 9.0 exactly: Marlin (7.5 or above)
    ((8, 0), ("marlin", "marlin", "marlin")),
    ((8, 9), ("marlin", "marlin", "marlin")),
    # 9.0: 0.11 has no triton_kernels (Marlin); 0.19 (9, 0) <= capability < (11, 0); 0.33 below (13, 0)
    ((9, 0), ("marlin", "triton", "triton-0.33")),
    # 10.x: 0.11's is_device_capability(100) is 10.0 exactly; TrtLlmMxfp4Experts' is_device_capability_family(100)
    ((10, 0), ("trtllm", "trtllm", "trtllm-0.33")),
    ((10, 3), ("marlin", "trtllm", "trtllm-0.33")),
    # 11.x: 0.19's Triton stops below 11.0 (Marlin); 0.33's runs there, in a layout not read
    ((11, 0), ("marlin", "marlin", "")),
    # 12.x: family 120 moves 0.33's Triton after Marlin
    ((12, 0), ("marlin", "marlin", "marlin")),
    ((12, 1), ("marlin", "marlin", "marlin")),
])
def test_the_mxfp4_backend_follows_each_releases_capability_tests(capability: tuple[int, int],
                                                                   backends: tuple[str, str, str]) -> None:
    device = device_facts(None, capability)
    assert tuple(mxfp4_moe_backend(release, device) for release in RELEASES) == backends


def test_each_catalog_device_gets_the_mxfp4_backend_of_its_capability() -> None:
    for device in list_devices():
        facts = device_facts(device.id)
        custom = device_facts(None, device.compute_capability)
        for release in RELEASES:
            assert mxfp4_moe_backend(release, facts) == mxfp4_moe_backend(release, custom), (device.id, release)
    assert mxfp4_moe_backend("0.19", device_facts("mi300x")) == ""  # ROCm: not read


@pytest.mark.parametrize(("device", "supported"), [
    # v1/sample/ops/topk_topp_sampler.py flashinfer_sampler_supported: CUDA, 8.0 <= capability <= 12.1, > 16 SMs
    (device_facts("l40s"), True),
    (device_facts("t4"), False),
    (device_facts("mi300x"), False),
    (device_facts(None, (12, 1)), True),
    (device_facts(None, (12, 2)), False),
    (device_facts(None, (7, 5)), False),
    (DeviceFacts(vendor="nvidia", compute_capability=(8, 7), compute_units=16), False),  # 16 SMs: too few
    (DeviceFacts(vendor="nvidia", compute_capability=(8, 7), compute_units=17), True),
    (UNKNOWN_DEVICE, True),  # nothing known: the larger charge
])
def test_the_flashinfer_sampler_follows_capability_and_sm_count(device: DeviceFacts, supported: bool) -> None:
    assert flashinfer_sampler_supported(device) is supported


def test_a_custom_device_below_8_0_samples_as_the_t4_but_with_the_safe_side_sm_count() -> None:
    # vLLM 0.33 on capability 7.5: the Triton top-k/top-p buffer of min(SMs, rows) rows; the T4's 40 SMs from the
    # catalog, a device given in bytes the most of the catalog's 7.x devices (the V100's 80)
    spec = get_preset_info("llama-3.1-8b").spec
    t4, _ = sampler_pass_bytes(spec, 256, 2048, device_facts("t4"), "0.33")
    custom, basis = sampler_pass_bytes(spec, 256, 2048, device_facts(None, (7, 5)), "0.33")
    assert custom - t4 == (80 - 40) * spec.vocab_size * 4
    assert "80 SMs: the device's count not given" in basis and "7.x" in basis


@pytest.mark.parametrize("release", RELEASES)
@pytest.mark.parametrize("device_id", ["h100-80gb", "l4", "b200"])
def test_a_device_given_in_bytes_with_its_capability_and_sm_count_is_planned_as_the_catalog_device_to_the_basis(
        release: str, device_id: str) -> None:
    # with the SM count given nothing differs but the hardware's name: the Triton top-k/top-p buffer (0.19, 0.33
    # below 8.0) and FlashInfer's choice (0.33) read the given count, and no basis says it was not known (not an
    # A100: vLLM's default scheduler limits read its name, "a100", in EngineArgs._set_default_args)
    device = get_device(device_id)
    assert device.compute_capability is not None and device.compute_units is not None
    catalog = _plan("llama-3.1-8b", Hardware(device.planning_bytes, 1, device.id, device.name), release)
    custom = _plan("llama-3.1-8b", Hardware(device.planning_bytes, 1, None, "custom", device.compute_capability,
                                            device.compute_units), release)
    assert custom.hardware.compute_units == catalog.hardware.compute_units == device.compute_units
    assert replace(custom, hardware=catalog.hardware) == catalog
    assert "not given" not in custom.activation.basis


def test_without_its_sm_count_an_l4_given_in_bytes_keeps_the_safe_side_fallback() -> None:
    # vLLM 0.19's Triton top-k/top-p buffer: min(next_power_of_2(min(SMs, 256 rows)), SMs) rows of the vocabulary;
    # an L4's 58 SMs, else the most of the catalog's 8.x devices (the L40S's 142)
    device = get_device("l4")
    vocabulary = get_preset_info("llama-3.1-8b").spec.vocab_size
    given = _plan("llama-3.1-8b", Hardware(device.planning_bytes, 1, None, "custom", (8, 9), 58), "0.19")
    fallback = _plan("llama-3.1-8b", Hardware(device.planning_bytes, 1, None, "custom", (8, 9)), "0.19")
    assert fallback.hardware.compute_units is None
    assert fallback.activation.bytes - given.activation.bytes == (142 - 58) * vocabulary * 4
    assert "142 SMs: the device's count not given" in fallback.activation.basis
    assert "58 SMs)" in given.activation.basis


def test_without_its_sm_count_a_b200_given_in_bytes_is_charged_the_gb200s_152() -> None:
    # the 10.x family's most: the GB200's 152 SMs (hao-ai-lab/FastVideo's GB200 device properties), 4 more than a
    # B200's 148; vLLM 0.19's Triton top-k/top-p buffer holds min(next_power_of_2(min(SMs, 256)), SMs) rows of the
    # vocabulary in fp32, so 4 rows more than the B200's own plan
    device = get_device("b200")
    vocabulary = get_preset_info("llama-3.1-8b").spec.vocab_size
    given = _plan("llama-3.1-8b", Hardware(device.planning_bytes, 1, None, "custom", (10, 0), 148), "0.19")
    fallback = _plan("llama-3.1-8b", Hardware(device.planning_bytes, 1, None, "custom", (10, 0)), "0.19")
    assert fallback.activation.bytes - given.activation.bytes == (152 - 148) * vocabulary * 4
    assert "152 SMs: the device's count not given" in fallback.activation.basis


@pytest.mark.parametrize("units", [0, -1, 10_001, 132.0, True, "132"])
def test_a_compute_unit_count_outside_1_to_10000_or_not_an_int_is_refused(units: object) -> None:
    with pytest.raises(InvalidSpec) as raised:
        Hardware(80 << 30, 1, None, "custom", (9, 0), units)  # type: ignore[arg-type]
    assert raised.value.field == "hardware.compute_units"


def test_a_catalog_device_is_refused_another_sm_count_and_accepts_its_own() -> None:
    device = get_device("h100-80gb")
    with pytest.raises(InvalidSpec, match="h100-80gb has 132 compute units"):
        Hardware(device.planning_bytes, 1, device.id, device.name, None, 114)
    assert Hardware(device.planning_bytes, 1, device.id, device.name, None, 132).compute_units == 132
    assert Hardware(device.planning_bytes, 1, device.id, device.name).compute_units == 132


@pytest.mark.parametrize(("device_id", "tokens", "sequences"), [
    # EngineArgs.get_batch_defaults (vLLM PR #17885): 8192 tokens and 1024 sequences on 70 GiB or more unless the
    # device's name holds "a100", else 2048 and 256; the engine model asks it of the catalog id
    ("h20", 8192, 1024), ("h200", 8192, 1024),
    ("l40", 2048, 256), ("rtx-6000-ada", 2048, 256), ("rtx-5090", 2048, 256),
    ("a100-80gb", 2048, 256),  # the A100 exception: 79.11 GiB, yet the small defaults
    # the A800 is no exception: torch names it "NVIDIA A800-SXM4-80GB" (no "a100"), so its 79.11 GiB takes the large
    # ones
    ("a800-80gb", 8192, 1024), ("l20", 2048, 256), ("b300", 8192, 1024),
    # the GH200's 94.88 GiB and the MI355X's 287.98 GiB take the large ones, the A40's 44.33 GiB the small
    ("gh200-96gb", 8192, 1024), ("mi355x", 8192, 1024), ("a40", 2048, 256), ("gb200", 8192, 1024),
])
def test_the_batch_defaults_follow_the_devices_size_and_name_as_vllms(device_id: str, tokens: int,
                                                                      sequences: int) -> None:
    device = get_device(device_id)
    limits = VllmProfile("0.19").batch_limits(device.planning_bytes, device.id)
    assert (limits.max_batched_tokens, limits.max_num_seqs) == (tokens, sequences)


def test_the_catalog_id_names_an_a100_exactly_when_the_device_name_does() -> None:
    # vLLM tests the name torch reports ("NVIDIA A100-SXM4-80GB"); the engine model the catalog id, which must agree
    for device in list_devices():
        assert ("a100" in device.id) == ("a100" in device.name.lower()), device.id
