"""Weight formats vLLM refuses on a device's compute capability are planned as not fitting.

The floors are read from each release's own code (`quant_core.engines.vllm_refusals.CAPABILITY_FLOORS`, which cites each
``get_min_capability`` and the check that enforces it); the devices' capabilities from NVIDIA's CUDA GPUs page
(``compute_capability`` in ``quant_core/data/devices.json``).
"""

from __future__ import annotations

import pytest

from quant_core.catalog import get_device, get_preset_info, list_devices
from quant_core.engines.vllm_refusals import capability_refusal
from quant_core.engines.vllm_releases import VERSIONS
from quant_core.errors import InvalidSpec
from quant_core.fit import fit_plan
from quant_core.formats import WeightFormat, block_format, float_format, fp8, int4
from quant_core.planner import Hardware, Plan, PlanOptions, Workload, plan
from quant_core.schemes import gguf_scheme, scheme_of, shipped_scheme_of

RELEASES = ("0.11", "0.19", "0.33")
GIB = 1 << 30


#: the memory utilization the T4 and V100 plans of the format tests run at: vLLM 0.11's CUDA graphs (Qwen3-8B at 256
#: sequences: 67 PIECEWISE and 35 FULL graphs, 1.40 GiB under the envelope of 0.11's logs, engines/vllm_graphs.py)
#: beside the 0.61 GiB in use at start-up need 2.01 GiB outside the budget: a T4's 14.56 GiB x 0.26 = 3.79 GiB holds
#: them (0.85 did before 0.11 had its own graph logs, at 1.25 GiB of graphs; the default 0.9 before the start-up memory
#: was charged, and on 0.19 until the T4's 15.83 GiB Windows total gave way to Linux's 14.56: 0.19's 1.56 GiB outside
#: the budget needs 0.89 or less there)
T4_UTILIZATION = 0.74

def _on(device_id: str, release: str, weight_format: WeightFormat | None = None, model: str = "qwen3-8b",
        count: int = 1, utilization: float = 0.9) -> Plan:
    """`model` on `count` catalog devices `device_id` under vLLM `release` at `utilization`: as shipped when no format
    is given."""
    info = get_preset_info(model)
    device = get_device(device_id)
    hardware = Hardware(device.planning_bytes, count, device.id, device.name)
    if weight_format is None:
        assert info.quantization_config is not None
        shipped = shipped_scheme_of(info.quantization_config)
        options = PlanOptions(scheme=shipped, shipped=shipped, engine_version=release, memory_utilization=utilization)
    else:
        options = PlanOptions(weight_format=weight_format, engine_version=release, memory_utilization=utilization)
    return plan(info.spec, hardware, Workload(4096, 1), options)


def test_the_three_releases_are_the_ones_whose_floors_are_read() -> None:
    assert set(RELEASES) == set(VERSIONS)


@pytest.mark.parametrize(("device_id", "capability"), [
    ("h100-80gb", (9, 0)), ("h200", (9, 0)), ("b200", (10, 0)), ("a100-80gb", (8, 0)), ("l40s", (8, 9)),
    ("l4", (8, 9)), ("a10g", (8, 6)), ("t4", (7, 5)), ("v100-16gb", (7, 0)), ("v100-32gb", (7, 0)),
    ("rtx-pro-6000", (12, 0)), ("rtx-4090", (8, 9)), ("rtx-3090", (8, 6)), ("h20", (9, 0)),
    ("l40", (8, 9)), ("rtx-6000-ada", (8, 9)), ("rtx-5090", (12, 0)), ("a800-80gb", (8, 0)), ("l20", (8, 9)),
    ("b300", (10, 3)), ("a40", (8, 6)), ("gh200-96gb", (9, 0)), ("gb200", (10, 0)),
])
def test_catalog_devices_carry_nvidias_compute_capability(device_id: str, capability: tuple[int, int]) -> None:
    device = get_device(device_id)
    assert device.compute_capability == capability
    assert "developer.nvidia.com/cuda-gpus" in device.compute_capability_source


def test_every_nvidia_device_has_a_capability_and_amd_devices_none() -> None:
    for device in list_devices():
        if device.vendor == "nvidia":
            assert device.compute_capability is not None, device.id
        else:
            assert device.compute_capability is None and "ROCm" in device.compute_capability_source, device.id


def test_hardware_of_a_catalog_device_takes_its_capability_and_bytes_leave_it_unknown() -> None:
    assert Hardware(16 * GIB, 1, "t4").compute_capability == (7, 5)
    assert Hardware(16 * GIB).compute_capability is None
    assert Hardware(16 * GIB, 1, None, "custom", (8, 6)).compute_capability == (8, 6)


@pytest.mark.parametrize("capability", [(7,), (0, 5), (8, 10), ("8", "9"), (8.0, 9)])
def test_a_bad_compute_capability_is_refused_naming_the_field(capability: object) -> None:
    with pytest.raises(InvalidSpec) as raised:
        Hardware(16 * GIB, 1, None, "custom", capability)  # type: ignore[arg-type]
    assert raised.value.field == "hardware.compute_capability"


@pytest.mark.parametrize("release", RELEASES)
@pytest.mark.parametrize("device_id", ["t4", "v100-32gb"])
def test_gpt_oss_20b_as_shipped_mxfp4_is_refused_below_compute_capability_8(release: str, device_id: str) -> None:
    """Mxfp4Config.get_min_capability() is 80 in 0.11, 0.19 and 0.33; gpt-oss-20b's 13 GiB would fit in memory (with
    0.11's 1.79 GiB of graphs and 0.61 GiB in use at start-up outside a budget of `T4_UTILIZATION`)."""
    result = _on(device_id, release, model="gpt-oss-20b", utilization=T4_UTILIZATION)
    assert result.primary.format == "mxfp4"
    if device_id == "v100-32gb":
        assert all(device.fits for device in result.primary.devices)  # memory alone would fit
    assert not result.fits
    assert result.refusal is not None
    assert "Mxfp4Config.get_min_capability() is 80" in result.refusal
    assert f"compute capability {get_device(device_id).compute_capability[0]}." in result.refusal  # type: ignore[index]
    assert result.primary.min_devices is None  # no count of these devices runs it


@pytest.mark.parametrize("release", RELEASES)
def test_gpt_oss_20b_as_shipped_runs_on_an_l4_and_fits_there_from_0_19(release: str) -> None:
    result = _on("l4", release, model="gpt-oss-20b")
    assert result.refusal is None  # compute capability 8.9 runs MXFP4
    if release == "0.11":
        # memory, not the format: 1.79 GiB of CUDA graphs (67 PIECEWISE and 35 FULL graphs up to 256 sequences under
        # the envelope of 0.11's logs, gpt-oss's 0.73 GiB excess included; 3.86 GiB while the Qwen2.5-Math-1.5B run's
        # 2.07 GiB was charged on every plan, 1.92 GiB before 0.11 had its own logs) and 0.61 GiB in use at start-up,
        # 2.40 GiB, against the 2.20 GiB a 0.9 budget leaves on an L4 (it fitted before the start-up memory was charged)
        assert not result.fits and all(device.used_bytes <= device.usable_bytes for device in result.primary.devices)
        assert any(w.startswith("Does not fit: vLLM 0.11 allocates 2.40 GiB") for w in result.warnings)
        return
    assert result.fits
    assert result.primary.min_devices == 1


@pytest.mark.parametrize("release", RELEASES)
@pytest.mark.parametrize("device_id", ["t4", "l4"])
def test_gptq_on_a_t4_falls_back_to_a_kernel_that_runs_and_fits(release: str, device_id: str) -> None:
    """0.11 takes GPTQ below 8.0 with GPTQConfig (floor 60), 0.19 with GPTQMarlin from 7.5, 0.33's AutoGPTQ
    Marlin from 7.5: the T4 runs it in every release, on the checkpoint's own bytes (at 0.74: `T4_UTILIZATION`)."""
    result = _on(device_id, release, int4(128, symmetric=True, layout="gptq"), utilization=T4_UTILIZATION)
    assert result.fits and result.refusal is None


@pytest.mark.parametrize(("release", "refused"), [("0.11", False), ("0.19", False), ("0.33", True)])
def test_gptq_on_a_v100_runs_on_exllama_until_0_33_runs_marlin_only(release: str, refused: bool) -> None:
    result = _on("v100-32gb", release, int4(128, symmetric=True, layout="gptq"), utilization=T4_UTILIZATION)
    assert result.fits is not refused
    assert (result.refusal is not None) is refused
    if refused:
        assert "verify_marlin_supported" in (result.refusal or "")


@pytest.mark.parametrize(("release", "t4_refused"), [("0.11", True), ("0.19", False), ("0.33", False)])
def test_nibbles_compressed_tensors_int4_output_on_a_t4_and_a_v100(release: str, t4_refused: bool) -> None:
    """CompressedTensorsWNA16.get_min_capability(): 80 in 0.11 ("ampere and up"), 75 in 0.19 and 0.33 ("Turing
    and up"), enforced by CompressedTensorsConfig._check_scheme_supported: a V100 (7.0) is refused by all three."""
    output = int4(128, symmetric=True, layout="compressed-tensors")
    on_t4 = _on("t4", release, output, utilization=T4_UTILIZATION)
    assert (on_t4.refusal is not None) is t4_refused and on_t4.fits is not t4_refused
    on_v100 = _on("v100-32gb", release, output)
    assert not on_v100.fits
    assert "CompressedTensorsWNA16.get_min_capability()" in (on_v100.refusal or "")


@pytest.mark.parametrize("release", RELEASES)
def test_awq_needs_compute_capability_7_5_in_every_release(release: str) -> None:
    awq = int4(128, layout="awq")
    assert _on("t4", release, awq, utilization=T4_UTILIZATION).fits
    refused = _on("v100-32gb", release, awq)
    assert not refused.fits and "its minimum is 7.5" in (refused.refusal or "")


@pytest.mark.parametrize(("release", "t4_refused"), [("0.11", True), ("0.19", False), ("0.33", False)])
@pytest.mark.parametrize("scales", ["tensor", "channel", "block"])
def test_fp8_needs_8_0_in_0_11_and_7_5_from_0_19(release: str, t4_refused: bool, scales: str) -> None:
    """Fp8Config.get_min_capability() (and compressed-tensors' weight-only fallback W8A16Fp8): 80 in 0.11, 75 in
    0.19 and 0.33; an A100 (8.0, no fp8 tensor cores) runs fp8 weight-only Marlin and is not refused."""
    weight_format = fp8(scales)  # type: ignore[arg-type]
    assert (_on("t4", release, weight_format).refusal is not None) is t4_refused
    assert _on("v100-32gb", release, weight_format).refusal is not None
    assert _on("a100-80gb", release, weight_format).refusal is None


@pytest.mark.parametrize("release", RELEASES)
@pytest.mark.parametrize("device_id", ["t4", "v100-32gb"])
def test_16_bit_weights_are_never_refused_for_the_device(release: str, device_id: str) -> None:
    """Below 8.0 vLLM runs a bf16 model as fp16 with dtype auto (_resolve_auto_dtype), the same bytes (at 0.74:
    `T4_UTILIZATION`)."""
    result = _on(device_id, release, float_format("bf16"), model="llama-3.2-3b", utilization=T4_UTILIZATION)
    assert result.refusal is None and result.fits


@pytest.mark.parametrize(("release", "refused_anywhere"), [("0.11", False), ("0.19", False), ("0.33", True)])
def test_gguf_and_bitsandbytes_are_refused_on_every_device_by_0_33_which_has_neither(
        release: str, refused_anywhere: bool) -> None:
    spec = get_preset_info("qwen3-8b").spec
    device = get_device("h100-80gb")
    for options in (PlanOptions(scheme=gguf_scheme("gguf-q4_k_m"), engine_version=release),
                    PlanOptions(weight_format=block_format("nf4"), engine_version=release)):
        for hardware in (Hardware(device.planning_bytes, 1, device.id), Hardware(device.planning_bytes)):
            result = plan(spec, hardware, Workload(4096, 1), options)
            assert (result.refusal is not None) is refused_anywhere
            assert result.fits is not refused_anywhere


def test_a_deployed_format_the_release_refuses_is_warned_as_refused_with_the_reason_not_as_not_fitting() -> None:
    """Llama-3.1-70B as GGUF Q4_K_M on two A100-40GB under vLLM 0.33, which has no GGUF: the warning said "The model
    does not fit as gguf-q4_k_m on 2 device(s) for this workload; it fits at INT4", though each device's memory holds
    its share: it says the engine's refusal."""
    spec = get_preset_info("llama-3.1-70b").spec
    device = get_device("a100-40gb")
    result = plan(spec, Hardware(device.planning_bytes, 2, device.id, device.name), Workload(4096, 1),
                  PlanOptions(scheme=gguf_scheme("gguf-q4_k_m"), engine_version="0.33"))
    refusal = capability_refusal("0.33", "gguf-q4_k_m", (8, 0))
    assert refusal is not None and result.refusal == refusal and not result.fits
    assert all(device.used_bytes <= device.usable_bytes for device in result.primary.devices)
    assert f"The model cannot run as gguf-q4_k_m on 2 device(s): {refusal}; it fits at INT4." in result.warnings
    assert not any("does not fit as gguf-q4_k_m" in warning for warning in result.warnings)


def test_hardware_in_bytes_is_not_refused_but_the_answer_says_the_capability_was_not_checked() -> None:
    spec = get_preset_info("gpt-oss-20b").spec
    scheme = scheme_of(block_format("mxfp4"))
    # on 17 GiB at 0.8 (3.4 GiB left free, a 13.6 GiB budget for 13.38 GiB): 0.19's 1.55 GiB of graphs for
    # gpt-oss-20b, 0.51 GiB in use at start-up and, the device's capability not known, FlashInfer's workspace for each
    # of its two KV cache groups (2 x 394 MiB, the capability whose attention buffers are the largest), 2.83 GiB.
    # 16 GiB at 0.85 held the 2.07 GiB charged before the workspace was: now no utilization fits both sides there
    result = plan(spec, Hardware(17 * GIB), Workload(4096, 1), PlanOptions(scheme=scheme, memory_utilization=0.8))
    assert result.refusal is None and result.fits
    unchecked = [warning for warning in result.warnings if "compute capability is not known" in warning]
    assert len(unchecked) == 1 and "from compute capability 8.0" in unchecked[0]


def test_hardware_in_bytes_with_a_given_capability_is_refused_as_the_catalog_device_is() -> None:
    spec = get_preset_info("gpt-oss-20b").spec
    options = PlanOptions(scheme=scheme_of(block_format("mxfp4")))
    given = plan(spec, Hardware(16 * GIB, 1, None, "my T4", (7, 5)), Workload(4096, 1), options)
    catalog = plan(spec, Hardware(16 * GIB, 1, "t4"), Workload(4096, 1), options)
    assert given.refusal == catalog.refusal is not None
    assert not any("compute capability is not known" in warning for warning in given.warnings)


def test_16_bit_weights_on_unknown_hardware_raise_no_capability_warning() -> None:
    spec = get_preset_info("qwen3-8b").spec
    result = plan(spec, Hardware(80 * GIB), Workload(4096, 1), PlanOptions(weight_format=float_format("bf16")))
    assert not any("compute capability" in warning for warning in result.warnings)


def test_nibbles_int4_on_a_v100_with_0_33_is_refused_and_said_so_in_the_warnings() -> None:
    """0.33 loads nibble's INT4 as GPTQ (Marlin only), AWQ or compressed-tensors: all need 7.5."""
    refused = _on("v100-32gb", "0.33", int4())
    assert not refused.fits and refused.comparison["int4"].refusal is not None
    assert refused.primary.min_devices is None
    assert any(warning.startswith("The model cannot run at INT4 on this device: vLLM 0.33")
               for warning in refused.warnings)
    assert _on("v100-32gb", "0.19", int4()).fits


def test_a_refused_format_is_refused_at_every_device_count_the_fewest_devices_solver_tries() -> None:
    for count in (1, 2, 4):
        result = _on("t4", "0.19", model="gpt-oss-20b", count=count)
        assert not result.fits and result.primary.min_devices is None


@pytest.mark.parametrize(("label", "capability", "refused"), [
    ("checkpoint-mxfp4", (7, 5), True),
    ("checkpoint-gptq", (7, 5), False),
    ("checkpoint-compressed-tensors", (7, 5), False),
    ("checkpoint-compressed-tensors", (7, 0), True),
    ("int8-g128-gptq-partial", (7, 0), False),
    ("nvfp4-static", (7, 5), False),
    ("nvfp4-static", (7, 0), True),
    ("mixed", (7, 0), False),
    ("bf16", (6, 0), False),
])
def test_a_checkpoint_labels_format_takes_its_familys_floor_in_0_19(label: str, capability: tuple[int, int],
                                                                     refused: bool) -> None:
    assert (capability_refusal("0.19", label, capability) is not None) is refused


@pytest.mark.parametrize("release", RELEASES)
def test_gemma_3_below_8_0_is_said_to_run_in_float32_and_charged_at_4_bytes(release: str) -> None:
    """_FLOAT16_NOT_SUPPORTED_MODELS holds gemma3_text in 0.11, 0.19 and 0.33: without bf16 vLLM runs it in fp32
    (the figures: tests/quant_core/test_float32_fallback.py)."""
    on_t4 = _on("t4", release, float_format("bf16"), model="gemma-3-1b-it")
    assert any("runs a gemma3_text model in float32" in warning and "charged here at 4 bytes" in warning
               for warning in on_t4.warnings)
    assert on_t4.primary.format == "fp32"
    on_l4 = _on("l4", release, float_format("bf16"), model="gemma-3-1b-it")
    assert not any("float32" in warning for warning in on_l4.warnings)
    llama = _on("t4", release, float_format("bf16"), model="llama-3.2-3b")
    assert not any("float32" in warning for warning in llama.warnings)


def test_the_best_fitting_mix_takes_no_format_the_release_refuses_on_the_device() -> None:
    """0.33 needs 7.5 for nibble's int4 and for int8 (`CAPABILITY_FLOORS`): on a V100 no mix with a quantized
    tensor runs, so the mix takes 16-bit everywhere, which fits Llama-3.2-3B on one V100-32GB (before: the search
    started from the refused int4 mix and answered refused, though 16-bit runs and fits), and names what it left
    out; 0.19 runs them from 6.0 and 7.0, and refuses none."""
    spec = get_preset_info("llama-3.2-3b").spec
    device = get_device("v100-32gb")
    hardware = Hardware(device.planning_bytes, 1, device.id, device.name)
    recipe = fit_plan(spec, hardware, Workload(4096, 1), PlanOptions(engine_version="0.33"))
    assert recipe.fits and recipe.reason is None and recipe.plan.refusal is None and recipe.plan.fits
    assert recipe.formats == {"bf16": 28 * 7}  # every linear of the 28 layers at 16-bit
    assert set(recipe.refused_formats) == {f"int4-g{group}-{kind}" for group in (32, 64, 128)
                                           for kind in ("sym", "asym")} | {"int8"}
    assert recipe.refused_formats["int8"] == capability_refusal("0.33", "int8", (7, 0))
    assert recipe.refused_formats["int4-g64-sym"] == capability_refusal("0.33", "int4-g64-sym", (7, 0))
    on_0_19 = fit_plan(spec, hardware, Workload(4096, 1), PlanOptions(engine_version="0.19"))
    assert on_0_19.fits and on_0_19.refused_formats == {}


def test_where_the_release_runs_no_quantized_format_a_miss_at_16_bit_says_the_refusals_first() -> None:
    """Llama-3.1-70B on four V100-32GB under vLLM 0.33: int4 and int8 are refused there (7.5), and 16-bit (141 GB)
    does not fit in four 32 GB devices: the reason is the refusal, then the memory, never a refused mix planned as
    a memory miss (before: "the engine refuses the layout: ... int4-g128-sym ..." with the refused int4 mix as the
    plan, though no int4 mix may be deployed there)."""
    spec = get_preset_info("llama-3.1-70b").spec
    device = get_device("v100-32gb")
    hardware = Hardware(device.planning_bytes, 4, device.id, device.name)
    recipe = fit_plan(spec, hardware, Workload(4096, 1), PlanOptions(engine_version="0.33"))
    assert not recipe.fits and recipe.reason is not None and recipe.plan.refusal is None
    assert recipe.formats == {"bf16": 80 * 7}
    assert recipe.reason.startswith("the engine refuses every quantized format a mix may take on these devices "
                                    "(int4-g128-asym, int4-g128-sym, int4-g32-asym, int4-g32-sym, int4-g64-asym, "
                                    "int4-g64-sym: " + capability_refusal("0.33", "int4-g128-asym", (7, 0)) + "; int8: "
                                    + capability_refusal("0.33", "int8", (7, 0)) + "), and the model does not fit "
                                    "even with every tensor at 16-bit (bf16): device 0 needs ")
    assert {chosen.label() for _, chosen in recipe.mix} == {"bf16"}


@pytest.mark.parametrize(("device_id", "refused"), [("a100-80gb", True), ("l40s", True), ("rtx-pro-6000", True),
                                                    ("h200", False), ("b200", False)])
def test_deepseek_sparse_attention_has_no_vllm_0_19_attention_backend_outside_hopper_and_blackwell(
        device_id: str, refused: bool) -> None:
    """0.19's sparse MLA backends: FlashMLASparse on 9.x and 10.x, FlashInferMLASparse on 10.x; on any other
    device get_attn_backend_cls finds no valid backend, whatever the weights' format (16-bit included)."""
    for model in ("deepseek-v3.2", "glm-5.1"):
        result = _on(device_id, "0.19", float_format("bf16"), model=model, count=8)
        assert (result.refusal is not None) is refused, (model, device_id)
        if refused:
            assert "No valid attention backend found" in (result.refusal or "")
            assert not result.fits and result.primary.min_devices is None
            assert result.comparison["int4"].refusal == result.refusal
