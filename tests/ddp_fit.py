"""Run by test_train.py, once under `accelerate launch --num_processes 2` and once as one process."""

import sys
from pathlib import Path

from accelerate import PartialState
from safetensors.torch import save_model

from distill.config import ObjectiveConfig, TrainingConfig
from distill.objective import Objective
from distill.trainer import fit
from helpers import blobs, mlp

output, batch_size = Path(sys.argv[1]), int(sys.argv[2])
output.mkdir(parents=True, exist_ok=True)
student, teacher = mlp(seed=0), mlp(hidden=32, seed=1)
if PartialState().is_main_process:
    save_model(student, str(output / "initial.safetensors"))
config = TrainingConfig(optimizer="sgd", lr=0.2, momentum=0.9, schedule="cosine", batch_size=batch_size, max_steps=20,
                        warmup_steps=3)
result = fit(student, blobs(), objective=Objective(ObjectiveConfig(alpha=0.7, temperature=3.0)), training=config,
             stage="student", run_dir=output, seed=5, teacher=teacher, show_progress=False)
if PartialState().is_main_process:
    save_model(result.model, str(output / "final.safetensors"))
