"""Deep mutual learning / online co-distillation (Zhang et al. 2018; Anil et al. 2018): peers trained together,
each learning from the labels and from the other peers' current outputs.

The peers are one module, so the ordinary trainer (one optimizer, checkpoints, resume, DDP) trains them all. Its
output is the peers' mean logits; signal ``peers.<i>`` is peer i's logits and ``stacked`` all of them as
[peers, batch, classes]. The recipe's objective is written for one student and one teacher; here it applies to
every peer, its teacher terms (soft_kl) reading the other peers through ``peer_kl``."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from distill.config import MutualMode, ObjectiveConfig, TermConfig
from distill.errors import DistillError
from distill.models import export_model
from distill.modes.common import ModeRun, require_classifier
from distill.objective import Objective
from distill.run import RunResult


class PeerGroup(nn.Module):
    def __init__(self, peers: list[nn.Module]):
        super().__init__()
        if len(peers) < 2:
            raise DistillError(f"mutual learning needs at least two peers, got {len(peers)}")
        self.peers = nn.ModuleList(peers)
        self.stacked = nn.Identity()  # a named place for the stacked logits, so a hook can read them

    def forward(self, inputs: Tensor) -> Tensor:
        return self.stacked(torch.stack([peer(inputs) for peer in self.peers])).mean(0)


def peer_objective(objective: ObjectiveConfig, peers: int) -> ObjectiveConfig:
    """The recipe's objective, once per peer: label terms on that peer's logits, soft_kl terms against the others."""
    terms = []
    for index in range(peers):
        for term in objective.terms:
            name = f"{term.display_name}/{index}"
            if term.loss == "soft_kl":
                if term.student != "logits" or term.teacher != "logits":
                    raise DistillError(f"mutual learning: term {term.display_name!r} compares {term.student!r} with "
                                       f"{term.teacher!r}; only logits are exchanged between peers")
                terms.append(TermConfig(name=name, loss="peer_kl", weight=term.weight, student="stacked",
                                        temperature=term.temperature or objective.temperature,
                                        options={"peer": index}))
            elif term.loss == "cross_entropy":
                terms.append(term.model_copy(update={"name": name, "student": f"peers.{index}"}))
            else:
                raise DistillError(f"mutual learning: objective term {term.display_name!r} ({term.loss}) is not "
                                   "supported; use cross_entropy terms for labels and soft_kl terms for the peers")
    return ObjectiveConfig(temperature=objective.temperature, terms=terms)


def run(job: ModeRun, student, mode: MutualMode) -> RunResult:
    config = job.config
    require_classifier(job.data, "mutual")
    peers = [job.build(spec, config.seed + 31 * index) for index, spec in enumerate(mode.peers)]
    job.check({f"peer {index}": peer for index, peer in enumerate(peers)})
    objective = Objective(peer_objective(config.objective, len(peers)))
    alone = {}
    if config.baseline:
        for index, (spec, peer) in enumerate(zip(mode.peers, peers)):
            alone[f"alone-{index}"] = job.stage(f"alone-{index}", copy.deepcopy(peer), spec, objective=Objective.hard_labels(),
                                                seed=config.seed + 31 * index)
    group = PeerGroup(peers)
    done = job.stage("peers", group, None, objective=objective, seed=config.seed)
    trained = list(done.peers)  # type: ignore[attr-defined]
    for index, (spec, peer) in enumerate(zip(mode.peers, trained)):
        export_model(peer, spec, job.run_dir / f"peer-{index}", input_shape=job.data.input_shape,
                     num_classes=job.data.num_classes)
    models = {f"peer-{index}": peer for index, peer in enumerate(trained)}
    # "teacher" is the first (usually largest) peer and "student" the last, so agreement and the exported
    # student/ read as in any run; "ensemble" is the peers' mean logits.
    return job.finish({"teacher": trained[0], **models, "ensemble": done, **alone, "student": trained[-1]},
                      student_stage="peers", student_spec=mode.peers[-1])
