"""Cost of capturing intermediate signals with forward hooks: a KD step with 4 hooked layers (in the student
and in the teacher) vs the same step with none, alternating, in one process.

    .venv/bin/python benchmarks/hook_overhead.py --rounds 7 --steps 60
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402

from common import fmt, write_results  # noqa: E402
from distill.capture import SignalCapture  # noqa: E402
from distill.losses.logits import cross_entropy, soft_kl  # noqa: E402
from distill.nets import CNN  # noqa: E402

HOOKED = ["features.2", "features.6", "features.10", "head:input"]


def run(student, teacher, optimizer, batches, hooked: bool) -> float:
    names = {"logits", *HOOKED} if hooked else {"logits"}
    student_capture = SignalCapture(student, names, role="student")
    teacher_capture = SignalCapture(teacher, names, role="teacher")
    start = time.perf_counter()
    for inputs, labels in batches:
        with torch.no_grad():
            teacher_logits = teacher_capture.forward(teacher, {"inputs": inputs})["logits"]
        student_logits = student_capture.forward(student, {"inputs": inputs})["logits"]
        loss = (0.9 * soft_kl(student_logits, teacher_logits, temperature=4.0)
                + 0.1 * cross_entropy(student_logits, labels))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    elapsed = (time.perf_counter() - start) / len(batches)
    student_capture.remove()
    teacher_capture.remove()
    return elapsed * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    torch.manual_seed(0)
    # MNIST-1D shaped inputs; a 3-block student and teacher so that 4 layers can be hooked in each.
    student, teacher = CNN((1, 40), [16, 32, 32], 10, 5), CNN((1, 40), [64, 128, 128], 10, 5).eval()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
    batches = [(torch.randn(64, 1, 40), torch.randint(0, 10, (64,))) for _ in range(args.steps)]
    run(student, teacher, optimizer, batches[:10], hooked=True)  # warm-up
    plain, hooked, ratios = [], [], []
    for round_index in range(args.rounds):
        order = (False, True) if round_index % 2 == 0 else (True, False)
        times = {flag: run(student, teacher, optimizer, batches, hooked=flag) for flag in order}
        plain.append(times[False])
        hooked.append(times[True])
        ratios.append(times[True] / times[False])
        print(f"round {round_index + 1}: no hooks {times[False]:.2f} ms/step, 4+4 hooks {times[True]:.2f} ms/step, "
              f"ratio {ratios[-1]:.3f}")
    print(f"\nstep time, no hooks: {fmt(plain, 2)} ms; with 4 hooked layers per model: {fmt(hooked, 2)} ms; "
          f"ratio {fmt(ratios, 3)} (median {statistics.median(ratios):.3f})")
    write_results("hook_overhead", {"hook_overhead_ratio": statistics.median(ratios),
                                    "hook_overhead_ratio_mean": statistics.fmean(ratios),
                                    "hook_overhead_ratio_std": statistics.stdev(ratios),
                                    "plain_step_ms": statistics.median(plain),
                                    "hooked_step_ms": statistics.median(hooked),
                                    "hooked_layers": HOOKED, "rounds": args.rounds, "steps_per_round": args.steps,
                                    "batch": 64})


if __name__ == "__main__":
    main()
