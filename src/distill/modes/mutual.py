"""Deep mutual learning / online co-distillation (Zhang et al. 2018; Anil et al. 2018): peers trained together,
each learning from the labels and from the other peers' current outputs.

The peers are one module, so the ordinary trainer (one optimizer, checkpoints, resume, DDP) trains them all. Its
output is the peers' mean logits; signal ``peers.<i>`` is peer i's logits and ``stacked`` all of them as
[peers, batch, classes]. The recipe's objective is written for one student and one teacher; here it applies to
every peer, its teacher terms (soft_kl) reading the other peers through ``peer_kl``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from distill.config import MutualMode, ObjectiveConfig, Recipe, TermConfig
from distill.errors import DistillError
from distill.models import build_seeded
from distill.modes.common import checked, finish_stage, prepare_stage
from distill.stages import RunContext, Stage
from distill.training_stage import export_trained, train_stage


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


def plan(config: Recipe, mode: MutualMode, given: set[str]) -> list[Stage]:
    objective = peer_objective(config.objective, len(mode.peers))  # refused here, before anything is built
    seeds = [config.seed + 31 * index for index in range(len(mode.peers))]
    peers = [f"peer-{index}" for index in range(len(mode.peers))]

    def prepare(context: RunContext) -> None:
        for name, spec, seed in zip(peers, mode.peers, seeds):
            context.artifacts[name] = build_seeded(spec, context.data, seed)
        checked(context, {f"peer {index}": context[name] for index, name in enumerate(peers)})
        context.artifacts["peer-group"] = PeerGroup([context[name] for name in peers])

    def split(context: RunContext) -> None:
        for name, spec, peer in zip(peers, mode.peers, context["peers"].peers):
            context.artifacts[name] = peer
            export_trained(peer, spec, context, name, context.data)

    stages = [prepare_stage("build the peers; check them", prepare, (*peers, "peer-group"), given)]
    if config.baseline:  # each peer's architecture alone, on hard labels
        stages += [train_stage(f"alone-{index}", model=name, copy_model=True, training=config.training, seed=seed,
                               spec=spec, does=f"peer {index}'s architecture alone, on hard labels")
                   for index, (name, spec, seed) in enumerate(zip(peers, mode.peers, seeds))]
    stages += [train_stage("peers", model="peer-group", objective=objective, training=config.training,
                           seed=config.seed, does="train the peers together, each against the others"),
               Stage("split", "export each trained peer", split, reads=("peers",), writes=tuple(peers),
                     files=tuple(f"{name}/" for name in peers))]

    def models(context: RunContext) -> dict[str, Any]:
        # "teacher" is the first (usually largest) peer and "student" the last, so agreement and the exported
        # student/ read as in any run; "ensemble" is the peers' mean logits.
        alone = {f"alone-{index}": context[f"alone-{index}"] for index in range(len(peers)) if config.baseline}
        return {"teacher": context[peers[0]], **{name: context[name] for name in peers}, "ensemble": context["peers"],
                **alone, "student": context[peers[-1]]}

    stages.append(finish_stage(config, models, reads=tuple(peers), student_stage="peers", student_spec=mode.peers[-1]))
    return stages
