"""Fidelity of a sentence encoder to its teacher: embedding cosine and nearest-neighbour overlap."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from distill.capture import SignalCapture
from distill.data.tokens import collate_fn_of


@torch.no_grad()
def encode(model: torch.nn.Module, dataset: Dataset, *, batch_size: int = 64, signal: str = "mean_pooled",
           device: str | torch.device = "cpu") -> tuple[Tensor, float]:
    """Embeddings of a whole dataset (in order) and the encoding throughput in samples per second."""
    was_training = model.training
    model.eval()
    capture = SignalCapture(model, {signal}, role="model")
    embeddings = []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn_of(dataset))
    seconds = 0.0
    for batch in loader:
        batch = {key: value.to(device) for key, value in batch.items() if key != "labels"}
        start = time.perf_counter()
        embeddings.append(capture.forward(model, batch)[signal].float().cpu())
        seconds += time.perf_counter() - start
    capture.remove()
    model.train(was_training)
    result = torch.cat(embeddings)
    return result, len(result) / max(seconds, 1e-9)


def embedding_cosine(student_embeddings: Tensor, teacher_embeddings: Tensor) -> float:
    """Mean cosine similarity between each sample's student and teacher embedding."""
    return F.cosine_similarity(student_embeddings.float(), teacher_embeddings.float(), dim=-1).mean().item()


def neighbour_overlap(student_embeddings: Tensor, teacher_embeddings: Tensor, *, k: int = 10) -> float:
    """Mean share of each sample's k nearest neighbours (cosine, itself excluded) that the student's embedding
    space has in common with the teacher's: how much of the teacher's retrieval the student reproduces."""
    def neighbours(embeddings: Tensor) -> Tensor:
        normalised = F.normalize(embeddings.float(), dim=-1)
        similarity = normalised @ normalised.T
        similarity.fill_diagonal_(-float("inf"))
        return similarity.topk(k, dim=-1).indices

    student_neighbours, teacher_neighbours = neighbours(student_embeddings), neighbours(teacher_embeddings)
    shared = (student_neighbours.unsqueeze(-1) == teacher_neighbours.unsqueeze(-2)).any(-1).sum(-1)
    return (shared.float() / k).mean().item()
