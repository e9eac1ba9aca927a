"""Run by test_cache_train.py under `accelerate launch --num_processes 2`: the student of ddp_fit.py, taught from a
teacher cache (each rank looks up the samples its sampler gives it) instead of the live teacher."""

import sys
from pathlib import Path

from accelerate import PartialState
from safetensors.torch import save_model

from distill.cache import TeacherCache
from distill.config import ObjectiveConfig, TrainingConfig
from distill.data.indexed import IndexedDataset
from distill.objective import Objective
from distill.teachers import CachedTeacher
from distill.trainer import fit
from helpers import blobs, mlp

output, batch_size, cache = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
output.mkdir(parents=True, exist_ok=True)
config = TrainingConfig(optimizer="sgd", lr=0.2, momentum=0.9, schedule="cosine", batch_size=batch_size, max_steps=20,
                        warmup_steps=3)
result = fit(mlp(seed=0), IndexedDataset(blobs()), objective=Objective(ObjectiveConfig(alpha=0.7, temperature=3.0)),
             training=config, stage="student", run_dir=output, seed=5, teacher=CachedTeacher(TeacherCache(cache)),
             show_progress=False)
if PartialState().is_main_process:
    save_model(result.model, str(output / "final.safetensors"))
