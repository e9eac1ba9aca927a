"""Why the 2-layer MiniLM student stops short of the encoder goal (issue 3): four probes on a trained student.

    .venv/bin/python benchmarks/encoder_ceiling.py --student RUN/student --cache CACHE

RUN is a finished `distilbert-style` run (e.g. `hidden-s0` of benchmarks/encoder_distill.py) and CACHE the teacher
cache it trained from (only its sentence embeddings, `mean_pooled`, are read).

- fit: cosine and top-10 overlap on 537 random *training* verses, the 194 validation verses (training books) and
  the 537 held-out verses: is the gap to the teacher over-fitting, a shift of books, or the student's capacity?
- linear: the best affine map from the student's embeddings to the teacher's (ridge, fitted on 6,000 training
  verses) applied to the held-out ones: is the error one a linear layer after pooling would remove?
- relations: the trained student trained on for --relation-steps more steps with the embedding cosine alone, and
  with a term aimed at the neighbour structure added (`similarity_kl`, or the centred cross-similarity MSE below),
  over random batches or batches of teacher neighbours (4 verses and their 7 nearest training verses each).
- windows: the untrained derived student trained for one epoch of steps on the embedding cosine, on the verses
  (teacher from the cache) or on random word windows of 6-45 words cut across consecutive verses (teacher live):
  does more varied text help at equal steps?
- speed: encoding throughput of untrained students derived with 2 and 3 layers, over the teacher's (held-out verses,
  batch 64, one thread, teacher and students alternating for --speed-rounds rounds): could a deeper student keep
  the 2.5x goal? (This probe needs neither --student nor --cache.)
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from torch import Tensor  # noqa: E402

from common import write_results  # noqa: E402

RECIPE = "distilbert-style"


def cross_similarity_mse(student_embeddings: Tensor, teacher_embeddings: Tensor) -> Tensor:
    """Mean squared change the student's error makes to each sample's similarity with every centred teacher
    embedding of the batch: ``mean_ij ((s_i - t_i) . (t_j - mean t))^2`` on unit vectors. Its expectation weighs the
    error by the teacher embeddings' covariance, i.e. by how much each direction moves a similarity ranking."""
    student = F.normalize(student_embeddings, dim=-1)
    teacher = F.normalize(teacher_embeddings.detach(), dim=-1)
    centred = teacher - teacher.mean(0, keepdim=True)
    return (((student - teacher) @ centred.T) ** 2).mean()


def cached_embeddings(cache: Path, size: int) -> Tensor:
    """The teacher's unit sentence embeddings of every training verse, in dataset order, read from the cache."""
    from distill.cache.read import TeacherCache

    train = TeacherCache(cache, splits=["train"]).split("train")
    return F.normalize(train.read(torch.arange(size), ["mean_pooled"])["mean_pooled"].float(), dim=-1)


class Setting:
    """The recipe's data, teacher and tokenizer, and the fidelity of any student on a set of texts."""

    def __init__(self) -> None:
        from distill.config import load_recipe
        from distill.models import build_model
        from distill.run import load_data

        self.config = load_recipe(RECIPE)
        self.data = load_data(self.config)
        self.teacher = build_model(self.config.teacher.model, input_shape=self.data.input_shape,
                                   num_classes=self.data.num_classes, vocab_size=None).eval()
        self.texts = self.data.train.texts
        self.tokenizer = self.data.train.tokenizer
        self.max_length = self.config.data.max_length
        self.test_embeddings = self.encode(self.teacher, self.data.test.texts)

    def tokens(self, texts: list[str]) -> dict[str, Tensor]:
        return self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")

    @staticmethod
    def pooled(model: torch.nn.Module, tokens: dict[str, Tensor]) -> Tensor:
        """The unit sentence embedding, pooled as the recipe's `mean_pooled` signal is in training and evaluation."""
        from distill.capture import SignalCapture

        return F.normalize(SignalCapture(model, {"mean_pooled"}).forward(model, dict(tokens))["mean_pooled"], dim=-1)

    @torch.no_grad()
    def encode(self, model: torch.nn.Module, texts: list[str], batch_size: int = 64) -> Tensor:
        was_training = model.training
        model.eval()
        embeddings = torch.cat([self.pooled(model, self.tokens(texts[start:start + batch_size]))
                                for start in range(0, len(texts), batch_size)])
        model.train(was_training)
        return embeddings

    def fidelity(self, student: torch.nn.Module, texts: list[str] | None = None) -> dict[str, float]:
        """Cosine and top-10 overlap of the student with the teacher on ``texts`` (default: the held-out verses)."""
        if texts is None:
            return fidelity_of(self.encode(student, self.data.test.texts), self.test_embeddings)
        return fidelity_of(self.encode(student, texts), self.encode(self.teacher, texts))


def fidelity_of(student_embeddings: Tensor, teacher_embeddings: Tensor) -> dict[str, float]:
    from distill.evaluate.embedding import embedding_cosine, neighbour_overlap

    return {"cosine": round(embedding_cosine(student_embeddings, teacher_embeddings), 4),
            "overlap": round(neighbour_overlap(student_embeddings, teacher_embeddings), 3)}


def probe_fit(setting: Setting, student: torch.nn.Module, seed: int) -> dict:
    picked = torch.randperm(len(setting.texts), generator=torch.Generator().manual_seed(seed))[:537].tolist()
    return {"train_537_random": setting.fidelity(student, [setting.texts[i] for i in picked]),
            "validation_194": setting.fidelity(student, setting.data.val.texts),
            "held_out_537": setting.fidelity(student)}


def probe_linear(setting: Setting, student: torch.nn.Module, seed: int, fit_size: int = 6000) -> dict:
    picked = torch.randperm(len(setting.texts), generator=torch.Generator().manual_seed(seed))[:fit_size].tolist()
    texts = [setting.texts[i] for i in picked]

    def with_bias(embeddings: Tensor) -> Tensor:
        return torch.cat([embeddings, torch.ones(len(embeddings), 1)], dim=1)

    inputs, targets = with_bias(setting.encode(student, texts)), setting.encode(setting.teacher, texts)
    held_out = setting.encode(student, setting.data.test.texts)
    results = {"none": fidelity_of(held_out, setting.test_embeddings)}
    for ridge in (1e-3, 1e-1, 1.0):
        weights = torch.linalg.solve(inputs.T @ inputs + ridge * torch.eye(inputs.shape[1]), inputs.T @ targets)
        results[f"ridge_{ridge:g}"] = fidelity_of(with_bias(held_out) @ weights, setting.test_embeddings)
    return results


def train_steps(setting: Setting, student: torch.nn.Module, batches, *, steps: int, lr: float, schedule: bool,
                relation=None, relation_weight: float = 0.0, label: str = "") -> dict:
    """AdamW on ``1 - cos`` of the sentence embedding (+ ``relation_weight * relation``); fidelity every third."""
    from tqdm import tqdm
    from transformers import get_linear_schedule_with_warmup

    student.train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.05 * steps), steps) if schedule else None
    curve, started = [], time.perf_counter()
    for step in tqdm(range(1, steps + 1), desc=label, leave=False, mininterval=5):
        texts, teacher_embeddings = next(batches)
        student_embeddings = setting.pooled(student, setting.tokens(texts))
        loss = (1 - (student_embeddings * teacher_embeddings).sum(-1)).mean()
        if relation is not None:
            loss = loss + relation_weight * relation(student_embeddings, teacher_embeddings)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if step % max(1, steps // 3) == 0 or step == steps:
            curve.append({"step": step, **setting.fidelity(student)})
    return {**curve[-1], "curve": curve, "seconds": round(time.perf_counter() - started)}


def cached_batches(setting: Setting, embeddings: Tensor, batch_size: int, seed: int, neighbours: Tensor | None = None):
    """Random batches of training verses, or (with ``neighbours``) batches of a few random verses each with its
    nearest training verses in the teacher's space; teacher embeddings from the cache."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(setting.texts), generator=generator)
        per_batch = batch_size if neighbours is None else batch_size // neighbours.shape[1]
        for start in range(0, len(order) - per_batch + 1, per_batch):
            picked = order[start:start + per_batch]
            picked = picked if neighbours is None else neighbours[picked].reshape(-1)
            yield [setting.texts[i] for i in picked.tolist()], embeddings[picked]


def window_batches(setting: Setting, batch_size: int, seed: int):
    """Random 6-45-word windows cut from four consecutive training verses; the teacher embeds them live."""
    rng = random.Random(seed)
    while True:
        texts = []
        for _ in range(batch_size):
            start = rng.randrange(len(setting.texts) - 3)
            words = " ".join(setting.texts[start:start + 4]).split()
            length = rng.randint(6, 45)
            first = rng.randrange(max(1, len(words) - length))
            texts.append(" ".join(words[first:first + length]))
        with torch.no_grad():  # not around the yield: the caller's step would then run without gradients too
            teacher_embeddings = setting.pooled(setting.teacher, setting.tokens(texts))
        yield texts, teacher_embeddings


def nearest_training_verses(embeddings: Tensor, count: int, chunk: int = 2048) -> Tensor:
    """Each training verse's ``count`` nearest training verses by teacher cosine, itself first."""
    return torch.cat([(embeddings[start:start + chunk] @ embeddings.T).topk(count, dim=-1).indices
                      for start in range(0, len(embeddings), chunk)])


def probe_relations(setting: Setting, student_path: str, embeddings: Tensor, args) -> dict:
    from transformers import AutoModel

    from distill.losses.relations import similarity_kl

    neighbours = nearest_training_verses(embeddings, 8)
    variants = {
        "cosine only (control)": (None, None),
        "+ similarity_kl, random batches": (lambda s, t: similarity_kl(s, t, temperature=0.05), None),
        "+ similarity_kl, neighbour batches": (lambda s, t: similarity_kl(s, t, temperature=0.05), neighbours),
        "+ cross-similarity MSE x100, random batches": (lambda s, t: 100 * cross_similarity_mse(s, t), None),
        "+ cross-similarity MSE x100, neighbour batches": (lambda s, t: 100 * cross_similarity_mse(s, t), neighbours),
    }
    results = {}
    for name, (relation, batch_neighbours) in variants.items():
        torch.manual_seed(args.seed)
        student = AutoModel.from_pretrained(student_path)
        batches = cached_batches(setting, embeddings, args.batch_size, args.seed, batch_neighbours)
        results[name] = train_steps(setting, student, batches, steps=args.relation_steps, lr=2e-4, schedule=False,
                                    relation=relation, relation_weight=1.0, label=name)
        print(f"{name}: {results[name]['cosine']} / {results[name]['overlap']}", flush=True)
    return results


def probe_windows(setting: Setting, embeddings: Tensor, args) -> dict:
    from distill.derive import derive_student

    results = {}
    for name in ("verses (cached teacher)", "word windows (live teacher)"):
        torch.manual_seed(args.seed)
        student = derive_student(setting.teacher, [0, 5])
        batches = (cached_batches(setting, embeddings, args.batch_size, args.seed) if name.startswith("verses")
                   else window_batches(setting, args.batch_size, args.seed))
        results[name] = train_steps(setting, student, batches, steps=args.window_steps, lr=1e-3, schedule=True,
                                    label=name)
        print(f"{name}: {results[name]['cosine']} / {results[name]['overlap']}", flush=True)
    return results


def probe_speed(setting: Setting, rounds: int) -> dict:
    import statistics

    from distill.derive import derive_student
    from distill.evaluate.embedding import encode

    students = {"2 layers [0, 5]": derive_student(setting.teacher, [0, 5]).eval(),
                "3 layers [0, 3, 5]": derive_student(setting.teacher, [0, 3, 5]).eval()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the encoder benchmark measures its throughput
    encode(setting.teacher, setting.data.test)  # warm-up
    ratios: dict[str, list[float]] = {name: [] for name in students}
    for _ in range(rounds):
        teacher_speed = encode(setting.teacher, setting.data.test)[1]
        for name, student in students.items():
            ratios[name].append(encode(student, setting.data.test)[1] / teacher_speed)
    torch.set_num_threads(threads)
    return {name: {"throughput_ratio": statistics.fmean(values), "throughput_ratio_std": statistics.stdev(values),
                   "values": values} for name, values in ratios.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--student", help="a trained distilbert-style student folder (fit, linear, relations)")
    parser.add_argument("--cache", help="the distilbert-style teacher cache (relations, windows)")
    parser.add_argument("--probes", default="fit,linear,relations,windows")
    parser.add_argument("--relation-steps", type=int, default=400)
    parser.add_argument("--window-steps", type=int, default=949, help="one epoch of 32 verses")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--speed-rounds", type=int, default=5)
    parser.add_argument("--name", default="encoder_ceiling")
    args = parser.parse_args()
    from transformers import AutoModel

    torch.set_num_threads(args.threads)
    probes = [probe.strip() for probe in args.probes.split(",")]
    unknown = set(probes) - {"fit", "linear", "relations", "windows", "speed"}
    if unknown:
        raise SystemExit(f"--probes: unknown {sorted(unknown)}; choose from fit, linear, relations, windows, speed")
    if {"fit", "linear", "relations"} & set(probes) and not args.student:
        raise SystemExit("--student: the fit, linear and relations probes need a trained student folder")
    if {"relations", "windows"} & set(probes) and not args.cache:
        raise SystemExit("--cache: the relations and windows probes need the distilbert-style teacher cache")
    setting = Setting()
    trained = AutoModel.from_pretrained(args.student).eval() if args.student else None
    embeddings = cached_embeddings(Path(args.cache), len(setting.texts)) if {"relations", "windows"} & set(probes) \
        else None
    results: dict = {"student": args.student, "seed": args.seed}
    if "fit" in probes:
        results["fit"] = probe_fit(setting, trained, args.seed)
    if "linear" in probes:
        results["linear"] = probe_linear(setting, trained, args.seed)
    if "relations" in probes:
        results["relations"] = probe_relations(setting, args.student, embeddings, args)
    if "windows" in probes:
        results["windows"] = probe_windows(setting, embeddings, args)
    if "speed" in probes:
        results["speed"] = probe_speed(setting, args.speed_rounds)
    table = Table(title="MiniLM-L6 -> 2 layers: where the student's error sits (seed "
                        f"{args.seed}; cosine / top-10 overlap with the teacher)")
    for column in ("probe", "variant", "cosine", "top-10 overlap"):
        table.add_column(column)
    for probe in ("fit", "linear", "relations", "windows"):
        for variant, row in results.get(probe, {}).items():
            table.add_row(probe, variant, f"{row['cosine']:.4f}", f"{row['overlap']:.3f}")
    for variant, row in results.get("speed", {}).items():
        table.add_row("speed", f"{variant}: throughput vs teacher",
                      f"{row['throughput_ratio']:.2f} ± {row['throughput_ratio_std']:.2f}x", "")
    Console().print(table)
    write_results(args.name, results)


if __name__ == "__main__":
    main()
