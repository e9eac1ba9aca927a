"""Run a teacher once over a recipe's data and store the signals its objective reads: resumable and crash-safe.

Every shard is computed from the same fixed batches, written under a ``.partial`` name, fsynced and renamed, and
only then recorded (with its sha256) in ``build-progress.json``. A build killed at any moment is continued by
running it again: recorded shards whose checksum still matches are kept, anything else is recomputed, and the
index and ``cache.json`` are written last. The result is byte-identical to an uninterrupted build.
"""

from __future__ import annotations

import datetime as _datetime
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.utils.data import Dataset, default_collate

from distill.cache.fingerprint import (
    dataset_fingerprint,
    model_fingerprint,
    tokenizer_fingerprint,
)
from distill.cache.format import (
    DEFAULT_TOP_K,
    FINAL_HIDDEN,
    FORMAT_NAME,
    FORMAT_VERSION,
    INDEX_FILE,
    LOG_TAIL,
    METADATA_FILE,
    PARTIAL,
    PROGRESS_FILE,
    SAMPLE_IDS,
    TOPK_IDS,
    TOPK_LOGPROBS,
    TOPK_SIGNALS,
    VALUE_DTYPES,
    SignalInfo,
    dtype_name,
    narrowest_int_dtype,
    offsets_key,
    read_metadata,
    sha256_file,
    shard_name,
    values_key,
)
from distill.checkpoint import WriteFailed, check_writable, fsync_dir, write_json_atomic, writing
from distill.data.tokens import collate_fn_of
from distill.errors import DistillError
from distill.stages import RECIPE_FILE, is_run_dir, on_main

SignalFunction = Callable[[dict[str, Any]], dict[str, Tensor]]


@dataclass
class BuildSettings:
    """Everything the stored bytes depend on: a partial build is continued only under identical settings."""
    teacher_fingerprint: str
    tokenizer_fingerprint: str | None
    dataset_fingerprints: dict[str, str]
    split_sizes: dict[str, int]
    signals: list[str]
    value_dtype: str
    samples_per_shard: int
    batch_size: int
    top_k: int | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _library_version() -> str:
    from distill.version import __version__

    return __version__


def _is_token_signal(value: Tensor, batch: dict[str, Any]) -> bool:
    mask = batch.get("attention_mask")
    return mask is not None and value.dim() >= 3 and value.shape[:2] == mask.shape


class CacheWriter:
    """Writes the cache of ``signal_function`` (a batch -> {signal name: [batch, ...] tensor}) over named splits.

    Generic over where the signals come from; ``build_cache`` below feeds it a recipe's teacher. Token-level
    signals ([batch, tokens, ...] with an ``attention_mask`` in the batch) are stored ragged: only real tokens."""

    def __init__(self, output: str | Path, *, signal_function: SignalFunction, splits: dict[str, Dataset],
                 settings: BuildSettings, device: torch.device, description: dict[str, Any] | None = None,
                 show_progress: bool = True):
        self.output = Path(output)
        self.signal_function, self.splits, self.settings = signal_function, splits, settings
        self.device, self.description, self.show_progress = device, description or {}, show_progress
        self.value_dtype = VALUE_DTYPES[settings.value_dtype]
        self.completed: dict[str, str] = {}
        self.kept = 0

    # ------------------------------------------------------------------ batches and shards
    def _batch(self, dataset: Dataset, indices: range) -> dict[str, Any]:
        collate = collate_fn_of(dataset) or default_collate
        batch = collate([dataset[index] for index in indices])
        return {key: value.to(self.device) if isinstance(value, Tensor) else value for key, value in batch.items()}

    def _stored(self, name: str, value: Tensor) -> Tensor:
        value = value.detach()
        if not value.is_floating_point():
            return value.to("cpu")
        stored = value.to(self.value_dtype)
        if not bool(torch.isfinite(stored).all()) and bool(torch.isfinite(value).all()):
            largest = float(value.abs().max())
            raise DistillError(f"teacher signal {name!r} reaches {largest:.4g}, beyond {self.settings.value_dtype}'s "
                               "range; build with --dtype bfloat16 (same range as float32) or float32")
        return stored.to("cpu")

    def signal_infos(self) -> dict[str, SignalInfo]:
        """Shapes and dtypes of the stored signals, read off the first two samples."""
        dataset = next(iter(self.splits.values()))
        batch = self._batch(dataset, range(min(2, len(dataset))))  # type: ignore[arg-type]
        with torch.no_grad():
            signals = self.signal_function(batch)
        infos = {}
        for name in self.settings.signals:
            value = signals[name]
            ragged = _is_token_signal(value, batch)
            stored = self._stored(name, value)
            infos[name] = SignalInfo(dtype_name(stored.dtype), tuple(stored.shape[2:] if ragged else stored.shape[1:]),
                                     ragged)
        return infos

    def compute_shard(self, dataset: Dataset, start: int, stop: int, on_batch: Callable[[int], None]
                      ) -> dict[str, Tensor]:
        rows: dict[str, list[Tensor]] = {name: [] for name in self.settings.signals}
        lengths: dict[str, list[int]] = {name: [] for name in self.settings.signals}
        for batch_start in range(start, stop, self.settings.batch_size):
            indices = range(batch_start, min(stop, batch_start + self.settings.batch_size))
            batch = self._batch(dataset, indices)
            with torch.no_grad():
                signals = self.signal_function(batch)
            for name in self.settings.signals:
                value = signals[name]
                if _is_token_signal(value, batch):
                    real = batch["attention_mask"].bool()
                    for sample in range(value.shape[0]):
                        kept = value[sample][real[sample]]
                        rows[name].append(self._stored(name, kept))
                        lengths[name].append(kept.shape[0])
                else:
                    rows[name].append(self._stored(name, value))
            on_batch(len(indices))
        id_dtype = narrowest_int_dtype(len(dataset) - 1)  # type: ignore[arg-type]
        tensors = {SAMPLE_IDS: torch.arange(start, stop, dtype=torch.int64).to(id_dtype)}
        for name in self.settings.signals:
            tensors[values_key(name)] = torch.cat(rows[name]).contiguous()
            if lengths[name]:
                offsets = torch.zeros(len(lengths[name]) + 1, dtype=torch.int64)
                offsets[1:] = torch.tensor(lengths[name], dtype=torch.int64).cumsum(0)
                tensors[offsets_key(name)] = offsets
        return tensors

    def write_shard(self, name: str, tensors: dict[str, Tensor]) -> str:
        """Write atomically; returns the sha256. A failed write (disk full) removes its partial file and reports
        how much of the build is kept."""
        final = self.output / name
        partial = final.with_name(final.name + PARTIAL)
        try:
            with writing(partial):
                save_file(tensors, str(partial))
                with open(partial, "rb") as handle:
                    os.fsync(handle.fileno())
            checksum = sha256_file(partial)
            with writing(final):
                os.replace(partial, final)
            fsync_dir(self.output)
            self.completed[name] = checksum
            self._save_progress()
        except WriteFailed as error:
            partial.unlink(missing_ok=True)
            what = f"cache shard {final}" if error.path in (partial, final) else str(error.path)  # or the progress
            fix = "free space" if error.disk_full else "fix that"
            raise DistillError(f"cannot write {what}: {error.reason}. The {len(self.completed)} "
                               f"completed shards in {self.output} are kept; {fix} and run the same `distill cache "
                               "build` again to continue from them.") from None
        return checksum

    # ------------------------------------------------------------------ progress
    def _save_progress(self) -> None:
        write_json_atomic(self.output / PROGRESS_FILE, {"settings": self.settings.to_json(),
                                                       "completed": self.completed})

    def _load_progress(self) -> None:
        """Keep every recorded shard whose bytes still match; refuse a partial build made under other settings."""
        for stale in self.output.glob(f"*{PARTIAL}"):
            stale.unlink()
        path = self.output / PROGRESS_FILE
        if not path.is_file():
            if any(self.output.glob("*.safetensors")):
                raise DistillError(f"{self.output} holds shard files but no {PROGRESS_FILE}; it is not a cache build "
                                   "this distill can continue. Choose another --output or empty it.")
            return
        try:
            progress = json.loads(path.read_text())
            previous, completed = progress["settings"], dict(progress["completed"])
        except (OSError, ValueError, KeyError, TypeError):
            return  # an unreadable record: rebuild every shard (they are rewritten byte for byte)
        current = self.settings.to_json()
        differing = sorted(key for key in current if previous.get(key) != current[key])
        if differing:
            raise DistillError(f"{self.output} holds an unfinished cache build made with other settings "
                               f"({', '.join(differing)} differ); continue it with the same teacher, data and options, "
                               "or choose another --output")
        for name, checksum in completed.items():
            shard = self.output / name
            if shard.is_file() and sha256_file(shard) == checksum:
                self.completed[name] = checksum
        self.kept = len(self.completed)

    # ------------------------------------------------------------------ the build
    def _start(self) -> None:
        """The output folder, with the build's record written before its first shard: a shard is never on disk
        without the record that lets a later build trust it."""
        existing = self.output / METADATA_FILE
        if existing.is_file():
            raise DistillError(f"{self.output} already holds a finished teacher cache; choose another --output "
                               "(or delete it to rebuild)")
        try:
            with writing(self.output):
                self.output.mkdir(parents=True, exist_ok=True)
            self._load_progress()
            self._save_progress()
        except WriteFailed as error:
            raise DistillError(f"{error} Nothing was computed yet; {'free space' if error.disk_full else 'fix that'} "
                               "and run the same `distill cache build` again.") from None

    def run(self) -> dict[str, Any]:
        self._start()
        started = time.perf_counter()
        infos = self.signal_infos()
        per_shard = self.settings.samples_per_shard
        plan = [(split, number, start, min(start + per_shard, len(dataset)))  # type: ignore[arg-type]
                for split, dataset in self.splits.items()
                for number, start in enumerate(range(0, len(dataset), per_shard))]  # type: ignore[arg-type]
        total = sum(stop - start for _, _, start, stop in plan)
        progress = Progress(TextColumn("[bold]cache[/] {task.fields[split]}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("samples"), TimeElapsedColumn(), TimeRemainingColumn(),
                            refresh_per_second=2, disable=not self.show_progress)
        task = progress.add_task("cache", total=total, split="")
        with progress:
            for split, number, start, stop in plan:
                name = shard_name(split, number)
                progress.update(task, split=split)
                if name in self.completed:
                    progress.advance(task, stop - start)
                    continue
                tensors = self.compute_shard(self.splits[split], start, stop,
                                             lambda count: progress.advance(task, count))
                self.write_shard(name, tensors)
        return self._finish(infos, plan, time.perf_counter() - started)

    def _finish(self, infos: dict[str, SignalInfo], plan: list[tuple[str, int, int, int]], seconds: float
                ) -> dict[str, Any]:
        splits: dict[str, Any] = {}
        index: dict[str, Tensor] = {}
        for split, dataset in self.splits.items():
            size = len(dataset)  # type: ignore[arg-type]
            shards = [{"file": shard_name(split, number), "samples": stop - start,
                       "sha256": self.completed[shard_name(split, number)],
                       "bytes": (self.output / shard_name(split, number)).stat().st_size}
                      for shard_split, number, start, stop in plan if shard_split == split]
            splits[split] = {"samples": size, "shards": shards}
            ids = torch.arange(size, dtype=torch.int64)
            index[f"{split}/sample_ids"] = ids
            index[f"{split}/shard"] = (ids // self.settings.samples_per_shard).to(torch.int32)
            index[f"{split}/offset"] = (ids % self.settings.samples_per_shard).to(torch.int32)
        try:
            partial_index = self.output / (INDEX_FILE + PARTIAL)
            with writing(partial_index):
                save_file(index, str(partial_index))
                os.replace(partial_index, self.output / INDEX_FILE)
            metadata = {
                "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "library_version": _library_version(),
                "created": _datetime.datetime.now(_datetime.timezone.utc).isoformat(timespec="seconds"),
                "teacher_fingerprint": self.settings.teacher_fingerprint,
                "tokenizer_fingerprint": self.settings.tokenizer_fingerprint,
                "dataset_fingerprints": self.settings.dataset_fingerprints,
                "signals": {name: info.to_json() for name, info in infos.items()},
                "value_dtype": self.settings.value_dtype, "k": self.settings.top_k,
                "samples_per_shard": self.settings.samples_per_shard, "build_batch_size": self.settings.batch_size,
                "splits": splits, "source": self.description,
                "build": {"seconds": round(seconds, 3), "shards_kept_from_earlier_run": self.kept},
            }
            write_json_atomic(self.output / METADATA_FILE, metadata)
        except WriteFailed as error:
            (self.output / (INDEX_FILE + PARTIAL)).unlink(missing_ok=True)
            raise DistillError(f"cannot write {error.path}: {error.reason}. Every shard of {self.output} is "
                               f"complete and kept; {'free space' if error.disk_full else 'fix that'} and run the same "
                               "`distill cache build` again.") from None
        (self.output / PROGRESS_FILE).unlink(missing_ok=True)
        return metadata


def check_cache_output(output: Path) -> None:
    """Before the teacher runs: ``output`` can be written, and is no run's folder (a cache never writes into a
    run directory: its checkpoints, models and metrics are the run's own)."""
    check_writable(output, "--output")
    owner = next((folder for folder in (output.absolute(), *output.absolute().parents) if is_run_dir(folder)), None)
    if owner is not None:
        inside = "is" if owner == output.absolute() else f"is inside {owner}, which is"
        raise DistillError(f"--output {output} {inside} a training run's directory (it holds {RECIPE_FILE} and the "
                           "run's log or finished stages); a cache is not written into a run. Choose a folder of its "
                           f"own, e.g. --output {owner.parent / (owner.name + '-cache')}.")


def _teacher_for(config: Any, data: Any) -> nn.Module:
    from distill.models import build_teacher

    teacher_config = config.teacher
    if teacher_config.train is not None:
        raise DistillError("teacher.train: this recipe trains its teacher during the run, so there is no trained "
                           "teacher to cache yet. Train it once (`distill train RECIPE --output RUN`), then build "
                           "from the saved one: set `teacher.model: {kind: saved, path: RUN/teacher}` and remove "
                           "teacher.train (on the command line: --set teacher.train=null --set "
                           "'teacher.model={kind: saved, path: RUN/teacher}')")
    if teacher_config.model is None:
        raise DistillError("teacher.model is not set: a cache is built by running the recipe's teacher")
    return build_teacher(config, data).eval().requires_grad_(False)  # as `distill train` builds it


def recipe_teacher_fingerprint(config: Any, data: Any) -> str:
    """The fingerprint of the teacher a recipe names (built and loaded, not run)."""
    return model_fingerprint(_teacher_for(config, data))


def _topk_size(objective: Any, top_k: int | None) -> int:
    """k for a causal LM teacher: as asked, else the largest a token_kd term names, else DEFAULT_TOP_K."""
    asked = [int(term.options["top_k"]) for term in objective.terms
             if term.teacher_signal == FINAL_HIDDEN and term.options.get("top_k") is not None]
    if top_k is None:
        return max(asked, default=DEFAULT_TOP_K)
    if top_k <= 0:
        raise DistillError(f"--top-k {top_k}: must be a positive number of tokens per position")
    if asked and max(asked) > top_k:
        raise DistillError(f"--top-k {top_k}: the recipe's token_kd term asks for top_k={max(asked)}; build with "
                           f"--top-k {max(asked)} or more")
    return top_k


def _vocab_size_of(objective: Any) -> int | None:
    sizes = {term.options.get("vocab_size") for term in objective.terms if term.teacher_signal == FINAL_HIDDEN}
    sizes.discard(None)
    return int(min(sizes)) if sizes else None


def topk_signal_function(capture: Any, teacher: nn.Module, k: int, vocab_size: int | None = None) -> SignalFunction:
    """The teacher's signals with ``final_hidden`` replaced by its top k per token (see ``format.TOPK_SIGNALS``):
    the full next-token distribution is never stored, nor formed for more than one chunk of tokens at a time."""
    from distill.losses.lm import teacher_topk

    def signals(batch: dict[str, Any]) -> dict[str, Tensor]:
        values = dict(capture.forward(teacher, batch))
        final = values.pop(FINAL_HIDDEN)
        batch_size, tokens = final.hidden.shape[:2]
        topk = teacher_topk(final, k, vocab_size=vocab_size)
        vocabulary = vocab_size or final.weight.shape[0]
        values[TOPK_LOGPROBS] = topk.logprobs.reshape(batch_size, tokens, k)
        values[TOPK_IDS] = topk.ids.reshape(batch_size, tokens, k).to(narrowest_int_dtype(vocabulary - 1))
        values[LOG_TAIL] = topk.log_tail.reshape(batch_size, tokens, 1)
        return values

    return signals


def build_cache(recipe: Any, output: str | Path, *, overrides: list[str] | None = None, dtype: str = "float16",
                samples_per_shard: int = 4096, batch_size: int = 512, device: str = "auto", top_k: int | None = None,
                show_progress: bool = True) -> dict[str, Any]:
    """Build the teacher cache of ``recipe`` (YAML path, built-in name, dict or Recipe) in ``output``; returns its
    metadata. Run it again after a kill or a full disk to continue. A causal LM teacher read through
    ``final_hidden`` is stored as its ``top_k`` most likely tokens per position plus the tail mass."""
    from distill.capture import SignalCapture
    from distill.config import load_recipe
    from distill.data.recipe_data import load_data
    from distill.objective import Objective
    from distill.stages import ensure_process_group

    if dtype not in VALUE_DTYPES:
        raise DistillError(f"--dtype {dtype!r}: choose one of {', '.join(VALUE_DTYPES)}")
    if samples_per_shard <= 0 or batch_size <= 0:
        raise DistillError("--samples-per-shard and --batch-size must be positive")
    check_cache_output(Path(output))
    config = load_recipe(recipe, overrides)
    objective = Objective(config.objective)
    names = sorted(objective.signals("teacher")) if objective.needs_teacher else []
    if not names:
        raise DistillError("the recipe's objective reads nothing from the teacher; there is nothing to cache")
    lm_topk = _topk_size(objective, top_k) if FINAL_HIDDEN in names else None
    if lm_topk is None and top_k is not None:
        raise DistillError("--top-k applies to causal LM teachers read through final_hidden (token_kd terms); this "
                           f"recipe's teacher signals are {', '.join(names)}")
    ensure_process_group()  # launched on several processes: the main one builds, the others wait for it
    data = load_data(config)
    teacher = _teacher_for(config, data)
    target = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                          ("cpu" if device == "auto" else device))
    teacher.to(target)
    splits: dict[str, Dataset] = {"train": data.train}
    if data.val is not None and len(data.val) > 0:  # type: ignore[arg-type]
        splits["val"] = data.val  # validation's eval/loss compares with the teacher too
    tokenizer = getattr(data, "tokenizer", None) or getattr(data.train, "tokenizer", None)
    settings = BuildSettings(
        teacher_fingerprint=model_fingerprint(teacher), tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
        dataset_fingerprints={split: dataset_fingerprint(dataset) for split, dataset in splits.items()},
        split_sizes={split: len(dataset) for split, dataset in splits.items()},  # type: ignore[arg-type]
        signals=sorted((set(names) - {FINAL_HIDDEN}) | set(TOPK_SIGNALS)) if lm_topk else names,
        value_dtype=dtype, samples_per_shard=samples_per_shard, batch_size=batch_size, top_k=lm_topk)
    capture = SignalCapture(teacher, names, role="teacher")
    signal_function = (topk_signal_function(capture, teacher, lm_topk, _vocab_size_of(objective)) if lm_topk
                       else lambda batch: capture.forward(teacher, batch))
    description = {"recipe": config.name, "teacher": config.teacher.model.model_dump(mode="json")
                   if config.teacher.model is not None else None, "data": data.summary}
    try:
        writer = CacheWriter(output, signal_function=signal_function, splits=splits,
                             settings=settings, device=target, description=description, show_progress=show_progress)
        on_main(writer.run)
    finally:
        capture.remove()
    return read_metadata(Path(output))
