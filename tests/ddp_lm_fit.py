"""Run by test_lm_training.py, once under `accelerate launch --num_processes 2` and once as one process: one SGD
step of token-level KD on chat data whose micro-batches hold different numbers of supervised tokens."""

import sys
from pathlib import Path

from accelerate import PartialState
from safetensors.torch import save_model

from distill.config import ObjectiveConfig, TrainingConfig
from distill.data.lm import ChatExamples
from distill.objective import Objective
from distill.trainer import fit
from lm_helpers import chats, tiny_llama, tokenizer

output, batch_size = Path(sys.argv[1]), int(sys.argv[2])
output.mkdir(parents=True, exist_ok=True)
student, teacher = tiny_llama(512, hidden=16, seed=0), tiny_llama(512, hidden=24, seed=1)
objective = Objective(ObjectiveConfig(terms=[
    {"name": "kd", "loss": "token_kd", "student": "final_hidden", "teacher": "final_hidden", "weight": 0.7},
    {"name": "ce", "loss": "token_ce", "student": "final_hidden", "weight": 0.3}]))
config = TrainingConfig(optimizer="sgd", lr=1.0, momentum=0.0, schedule="constant", batch_size=batch_size,
                        max_steps=1, device="cpu")
result = fit(student, ChatExamples(chats(8), tokenizer(), max_length=64), objective=objective, training=config,
             stage="student", run_dir=output, seed=3, teacher=teacher, show_progress=False)
if PartialState().is_main_process:
    save_model(result.model, str(output / "final.safetensors"))
