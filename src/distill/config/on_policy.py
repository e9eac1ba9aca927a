"""The ``on_policy`` section: the student samples its own answers and the teacher scores every token of them."""

from __future__ import annotations

from pydantic import Field

from distill.config.base import StrictSection


class SamplingConfig(StrictSection):
    """How the student samples its answers to the training prompts."""
    max_new_tokens: int = Field(128, gt=0, description="Tokens sampled at most per answer; an answer that reaches "
                                "it without an end-of-sequence token is trained on as it is and counted "
                                "(truncated_share in log.jsonl).")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature (1: the student's own distribution, "
                               "as on-policy distillation assumes; 0: greedy).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling: keep the smallest set of tokens whose "
                         "probability reaches top_p.")
    top_k: int | None = Field(None, gt=0, description="Sample among the k most likely tokens only (null: all).")
    stop: list[str] = Field(default_factory=list, description="Strings that end an answer, besides the tokenizer's "
                            "end-of-sequence token.")


class OnPolicyConfig(StrictSection):
    """On-policy distillation (GKD, Agarwal et al. 2024; Thinking Machines 2025): for a share ``lmbda`` of the
    optimizer steps the student answers the prompts of its training batch itself, the teacher scores prompt +
    answer, and the objective is taken on the answer's tokens only (the prompt is masked). The other steps train on
    the training data as it is (off-policy: gold or teacher-generated answers). The prompts are each chat record's
    turns before its first assistant answer, so data must be chat data (data.lm.format chat, task:NAME or
    generated)."""
    lmbda: float = Field(1.0, ge=0, le=1, description="Share of optimizer steps on the student's own samples (GKD's "
                         "lambda); each step's choice is drawn from the recipe seed and the step, the same on every "
                         "process and on resume.")
    warmup_steps: int = Field(0, ge=0, description="The first this many steps train on the data alone, so that the "
                              "student samples answers worth scoring when on-policy steps begin (GKD and Thinking "
                              "Machines start from a fine-tuned student).")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="How the student samples.")
    generation_batch_size: int | None = Field(None, gt=0, description="Prompts sampled together, sorted by length "
                                              "(null: a whole accumulation window, batch_size x grad_accum, at once; "
                                              "the samples are made for the window before its first backward).")
    log_samples_every: int = Field(100, ge=0, description="Every this many steps, a prompt and the student's answer "
                                   "are written to log.jsonl (0: never).")
    compare_off_policy: bool = Field(False, description="Also train the same student from the same initial weights "
                                     "with the same objective on the training data alone (stage off_policy, lmbda "
                                     "0), evaluated beside it.")
