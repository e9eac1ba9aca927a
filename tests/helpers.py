"""Small builders shared by the training tests."""

import numpy as np
import torch

from distill.data import ArrayDataset


def blobs(num_samples=256, num_features=12, num_classes=4, seed=0):
    """A separable toy problem: Gaussian blobs around random class centres."""
    generator = np.random.default_rng(seed)
    centres = generator.normal(size=(num_classes, num_features)) * 2
    labels = generator.integers(0, num_classes, num_samples)
    inputs = centres[labels] + generator.normal(size=(num_samples, num_features))
    return ArrayDataset(inputs.astype(np.float32), labels.astype(np.int64))


def mlp(num_features=12, hidden=16, num_classes=4, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(num_features, hidden), torch.nn.Tanh(),
                               torch.nn.Linear(hidden, num_classes))


def flat_parameters(model):
    return torch.cat([parameter.detach().flatten() for parameter in model.parameters()])


class NaNAfter(torch.nn.Module):
    """A teacher whose outputs turn NaN after some calls: only the soft term can break."""

    def __init__(self, model, calls):
        super().__init__()
        self.model, self.calls = model, calls

    def forward(self, inputs):
        self.calls -= 1
        output = self.model(inputs)
        return output * float("nan") if self.calls < 0 else output
