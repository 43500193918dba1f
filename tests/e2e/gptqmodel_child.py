"""Load a GPTQ or AWQ checkpoint with transformers, which reads both through GPTQModel, and save what it holds.

Run as a child process by tests/e2e/test_checkpoint_loaders.py: importing GPTQModel changes the process that
imports it (the root logger set to INFO with a stderr handler, ``HF_HOME`` and other variables set in
``os.environ`` by tokenicer, background threads), which the rest of the suite must not inherit.

``python -m tests.e2e.gptqmodel_child [--dtype auto] CHECKPOINT OUT.safetensors [CHECKPOINT OUT.safetensors ...]``
loads each CHECKPOINT (one process for all: GPTQModel takes seconds to import) on CPU in float32 (with ``--dtype
auto``: the dtype its config.json names, as transformers' ``dtype="auto"`` and vLLM's ``--dtype auto`` take it) with
GPTQModel's torch kernels (``gptq_torch`` for GPTQ, ``torch_awq`` for AWQ: the kernels every CPU has; left to
choose, on a CPU with AVX512-BF16 it takes kernels it compiles as C++ extensions on first use) and writes to
OUT.safetensors, for every linear layer of the decoder blocks, ``<module>.weight`` (out x in: a GPTQModel
layer's own dequantization, a plain ``Linear``'s weight) and ``<module>.bias`` when it has one, and ``logits``
of the model on ``TOKENS``; its metadata ``classes`` maps each of those modules to its class
(``module.qualname``), and ``dtype`` the model's dtype.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TOKENS = [[1, 5, 9, 40, 2]]


def main(checkpoint: Path, target: Path, dtype: str = "float32") -> None:
    """Load `checkpoint` at `dtype` (``float32`` or ``auto``), write what it holds to `target`."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AwqConfig, GPTQConfig

    method = json.loads((checkpoint / "config.json").read_text())["quantization_config"]["quant_method"]
    # the loading attribute `backend` passed here overrides the checkpoint's; every other key is the checkpoint's
    config = GPTQConfig(bits=4, backend="gptq_torch") if method == "gptq" else AwqConfig(bits=4, backend="torch_awq")
    saved: dict[str, torch.Tensor] = {}
    classes: dict[str, str] = {}
    # TorchLinear.optimize() wraps dequantize_weight in torch.compile: force_eager runs the same function
    # without inductor's C++ build
    with torch.compiler.set_stance("force_eager"), torch.no_grad():
        model = AutoModelForCausalLM.from_pretrained(checkpoint, device_map="cpu",
                                                     dtype=torch.float32 if dtype == "float32" else dtype,
                                                     quantization_config=config)
        for name, layer in model.named_modules():
            if not name.startswith("model.layers.") or not hasattr(layer, "in_features"):
                continue
            classes[name] = f"{type(layer).__module__}.{type(layer).__qualname__}"
            if hasattr(layer, "dequantize_weight"):  # GPTQ's TorchLinear: its public dequantization, in x out
                weight = layer.dequantize_weight().T
            elif hasattr(layer, "qweight"):
                # AWQ's AwqTorchLinear has no public dequantization: its forward (dequantize_gemm, then x @ W in
                # fp16) on the identity is W, each entry 1 x w plus zeros, exact in fp16 (without the bias it
                # adds after)
                bias, layer.bias = layer.bias, None
                weight = layer(torch.eye(layer.in_features, dtype=torch.float16)).T
                layer.bias = bias
            else:
                weight = layer.weight
            saved[f"{name}.weight"] = weight.detach().clone().contiguous()
            if layer.bias is not None:
                saved[f"{name}.bias"] = layer.bias.detach().clone().contiguous()
        saved["logits"] = model(torch.tensor(TOKENS)).logits.contiguous()
    save_file(saved, str(target), metadata={"classes": json.dumps(classes), "dtype": str(model.dtype)})


if __name__ == "__main__":
    arguments, chosen = sys.argv[1:], "float32"
    if arguments[:1] == ["--dtype"]:
        chosen, arguments = arguments[1], arguments[2:]
    for checkpoint, target in zip(arguments[::2], arguments[1::2], strict=True):
        main(Path(checkpoint), Path(target), chosen)
