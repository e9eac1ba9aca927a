"""The built-in networks (MLP, CNN) and the file names of an exported model. A leaf module: the model loader
(``distill.models``) and the int8 variants (``distill.quantized``) both rebuild built-in nets from their spec."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor, nn

from distill.config import CNNSpec, MLPSpec
from distill.errors import DistillError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class MLP(nn.Module):
    def __init__(self, input_size: int, hidden: list[int], num_classes: int, dropout: float = 0.0,
                 input_dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        if input_dropout:
            layers.append(nn.Dropout(input_dropout))
        width = input_size
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, inputs: Tensor) -> Tensor:
        return self.net(inputs)


class CNN(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], channels: list[int], num_classes: int, kernel_size: int = 3,
                 batch_norm: bool = True, dropout: float = 0.0):
        super().__init__()
        if len(input_shape) not in (2, 3):
            raise DistillError(f"cnn needs inputs shaped (channels, length) or (channels, height, width), "
                               f"got per-sample shape {tuple(input_shape)}; use an mlp for flat features")
        conv, norm, pool = ((nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d) if len(input_shape) == 2
                            else (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d))
        blocks: list[nn.Module] = []
        width, extent = input_shape[0], min(input_shape[1:])
        for index, size in enumerate(channels):
            blocks += [conv(width, size, kernel_size, padding=kernel_size // 2)]
            if batch_norm:
                blocks.append(norm(size))
            blocks.append(nn.ReLU())
            if index < len(channels) - 1 and extent >= 4:  # pool while there is room for it
                blocks.append(pool(2))
                extent //= 2
            width = size
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool1d(1) if len(input_shape) == 2 else nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.head = nn.Linear(width, num_classes)

    def forward(self, inputs: Tensor) -> Tensor:
        return self.head(self.dropout(self.pool(self.features(inputs)).flatten(1)))


def require(value: Any, what: str) -> Any:
    if value is None:
        raise DistillError(f"building this model needs {what}, which the data did not provide")
    return value


def build_builtin(spec: MLPSpec | CNNSpec, *, input_shape: tuple[int, ...] | None,
                  num_classes: int | None) -> nn.Module:
    """A built-in net from its spec, sized by the data's per-sample input shape and class count."""
    if isinstance(spec, MLPSpec):
        return MLP(math.prod(require(input_shape, "input_shape")), spec.hidden, require(num_classes, "num_classes"),
                   spec.dropout, spec.input_dropout)
    return CNN(tuple(require(input_shape, "input_shape")), spec.channels, require(num_classes, "num_classes"),
               spec.kernel_size, spec.batch_norm, spec.dropout)
