"""int8 variants of a model: PyTorch's dynamic quantization of the Linear layers, exported as safetensors (int8
weights with their scales and zero points) plus the float spec, and rebuilt exactly from that folder.

Quantization uses PyTorch's own eager API, ``torch.ao.quantization.quantize_dynamic`` (int8 weights, activations
quantized on the fly, fbgemm/x86 kernels on CPU). In torch 2.13 it still works but warns that it is deprecated
in favour of torchao, whose int8 paths target GPUs and ``torch.compile``; the warning is silenced here, and
swapping the backend is this one file. Only ``nn.Linear`` layers are quantized (dynamic quantization has no
convolution kernels), so a CNN keeps its convolutions in float32.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from distill.config import CNNSpec, MLPSpec
from distill.errors import DistillError
from distill.nets import CONFIG_FILE, WEIGHTS_FILE, build_builtin

QUANTIZATION = "dynamic-int8"


def _quiet_quantization() -> Any:
    context = warnings.catch_warnings()
    context.__enter__()
    warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated.*")
    warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions.*")
    return context


def quantize_int8(model: nn.Module) -> nn.Module:
    """A dynamically int8-quantized copy of ``model`` (Linear layers); the original is left untouched."""
    from torch.ao.quantization import quantize_dynamic

    float_model = copy.deepcopy(model).eval().cpu()
    if not any(isinstance(module, nn.Linear) for module in float_model.modules()):
        raise DistillError("int8 dynamic quantization found no Linear layer to quantize in the student")
    context = _quiet_quantization()
    try:
        return quantize_dynamic(float_model, {nn.Linear}, dtype=torch.qint8)
    finally:
        context.__exit__(None, None, None)


def export_quantized(model: nn.Module, spec: Any, directory: Path, *, input_shape: tuple[int, ...] | None,
                     num_classes: int | None, class_names: list[str] | None = None) -> Path | None:
    """Write an int8 model as safetensors (int8 weights with their scales and zero points, float tensors as
    they are) plus the float spec, so ``load_quantized`` rebuilds it. Only built-in nets have a spec to rebuild
    from; other models are evaluated in memory and not exported (returns None)."""
    if not isinstance(spec, (MLPSpec, CNNSpec)):
        return None
    tensors: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        if isinstance(value, tuple):  # packed (weight, bias) of a quantized Linear
            prefix = key.removesuffix("._packed_params._packed_params")
            weight, bias = value[0], value[1]
            if weight.qscheme() != torch.per_tensor_affine:
                raise DistillError(f"int8 export supports per-tensor quantized weights, {prefix} is {weight.qscheme()}")
            tensors[f"{prefix}.weight_int8"] = weight.int_repr().contiguous()
            tensors[f"{prefix}.weight_scale"] = torch.tensor([weight.q_scale()], dtype=torch.float64)
            tensors[f"{prefix}.weight_zero_point"] = torch.tensor([weight.q_zero_point()], dtype=torch.int64)
            if bias is not None:
                tensors[f"{prefix}.bias"] = bias.detach().contiguous()
        elif isinstance(value, Tensor) and not key.endswith(("._packed_params.dtype",)):
            tensors[key] = value.detach().contiguous()
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / WEIGHTS_FILE))
    config = {"distill_model": spec.model_dump(mode="json"), "input_shape": list(input_shape) if input_shape else None,
              "num_classes": num_classes, "quantization": QUANTIZATION,
              **({"class_names": list(class_names)} if class_names else {})}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    return directory


def load_quantized(directory: str | Path) -> nn.Module:
    """Rebuild a model written by ``export_quantized``: the float architecture, quantized the same way, with the
    stored int8 weights put back exactly."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    directory = Path(directory)
    config = json.loads((directory / CONFIG_FILE).read_text())
    spec_data = config["distill_model"]
    spec = MLPSpec(**spec_data) if spec_data["kind"] == "mlp" else CNNSpec(**spec_data)
    float_model = build_builtin(spec, input_shape=tuple(config["input_shape"]), num_classes=config["num_classes"])
    model = quantize_int8(float_model)
    tensors = load_file(str(directory / WEIGHTS_FILE))
    context = _quiet_quantization()
    try:
        for name, module in model.named_modules():
            if isinstance(module, DynamicLinear):
                weight = torch._make_per_tensor_quantized_tensor(
                    tensors.pop(f"{name}.weight_int8"), float(tensors.pop(f"{name}.weight_scale")),
                    int(tensors.pop(f"{name}.weight_zero_point")))
                module.set_weight_bias(weight, tensors.pop(f"{name}.bias", None))
                for key in (f"{name}.scale", f"{name}.zero_point"):
                    tensors.pop(key, None)
        # what stayed float (convolutions, norms): copied one by one, as the quantized modules' own state-dict
        # loading expects keys that only quantized modules have
        current = model.state_dict()
        unknown = sorted(key for key in tensors if key not in current or not isinstance(current[key], Tensor))
        if unknown:
            raise DistillError(f"{directory / WEIGHTS_FILE} holds tensors the int8 model lacks: {unknown[:5]}")
        with torch.no_grad():
            for key, value in tensors.items():
                current[key].copy_(value)
    finally:
        context.__exit__(None, None, None)
    return model.eval()


