"""Run by test_on_policy.py, once under `accelerate launch --num_processes 2` and once as one process: one SGD step
of on-policy reverse-KL distillation, with answers that depend on the prompt alone (so both set-ups train on the
same samples)."""

import sys
from pathlib import Path

from accelerate import PartialState
from safetensors.torch import save_model

from distill.config import ObjectiveConfig, TrainingConfig
from distill.config.on_policy import OnPolicyConfig
from distill.data.lm import ChatExamples
from distill.objective import Objective
from distill.on_policy import on_policy_batches
from distill.trainer import finish_stage, start_stage, train_loop
from lm_helpers import FixedAnswers, chats, tiny_llama, tokenizer

output, batch_size = Path(sys.argv[1]), int(sys.argv[2])
output.mkdir(parents=True, exist_ok=True)
student, teacher = tiny_llama(512, hidden=16, seed=0), tiny_llama(512, hidden=24, seed=1)
objective = Objective(ObjectiveConfig(terms=[{"name": "kd", "loss": "token_kd", "student": "final_hidden",
                                              "teacher": "final_hidden", "options": {"divergence": "reverse_kl"}}]))
config = TrainingConfig(optimizer="sgd", lr=1.0, momentum=0.0, schedule="constant", batch_size=batch_size,
                        max_steps=1, device="cpu")
run = start_stage(student, ChatExamples(chats(8), tokenizer(), max_length=64), objective=objective,
                  training=config, stage="student", run_dir=output, seed=3, teacher=teacher, show_progress=False)
train_loop(run, batches=on_policy_batches(OnPolicyConfig(lmbda=1.0, log_samples_every=0), tokenizer(),
                                          FixedAnswers()))
result = finish_stage(run)
if PartialState().is_main_process:
    save_model(result.model, str(output / "final.safetensors"))
