"""LM evaluation side by side: fidelity, calibration and inherited errors against dense references on
materialised logits; cost measured for every model."""

import pytest
import torch

from distill.config import EvaluationConfig
from distill.data.lm import pack_texts
from distill.evaluate.lm import evaluate_language_models
from distill.evaluate.metrics import calibration, inherited_errors
from lm_helpers import tiny_llama, tokenizer

TEXT = ("In the beginning God created the heaven and the earth. And the earth was without form, and void; "
        "and darkness was upon the face of the deep. ") * 6


def test_lm_metrics_match_dense_references(tmp_path):
    data = pack_texts([TEXT], tokenizer(), 16)
    teacher, student = tiny_llama(hidden=16, seed=0), tiny_llama(hidden=8, seed=1)
    student.save_pretrained(tmp_path / "student")
    metrics = evaluate_language_models({"teacher": teacher, "student": student}, data, batch_size=3,
                                       evaluation=EvaluationConfig(latency_b1_runs=20, max_test_tokens=None),
                                       model_dirs={"student": tmp_path / "student"})
    blocks = [data[index] for index in range(len(data))]
    inputs = {"input_ids": torch.stack([block["input_ids"] for block in blocks]),
              "attention_mask": torch.stack([block["attention_mask"] for block in blocks])}
    labels = torch.stack([block["labels"] for block in blocks]).reshape(-1)
    supervised = labels != -100
    with torch.no_grad():
        teacher_logits = teacher(**inputs).logits.reshape(-1, 512)[supervised]
        student_logits = student(**inputs).logits.reshape(-1, 512)[supervised]
    targets = labels[supervised]
    log_p, log_q = teacher_logits.log_softmax(-1), student_logits.log_softmax(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    log_m = torch.logaddexp(log_p, log_q) - torch.log(torch.tensor(2.0))
    jsd = 0.5 * (log_p.exp() * (log_p - log_m)).sum(-1).mean() + 0.5 * (log_q.exp() * (log_q - log_m)).sum(-1).mean()
    row = metrics["student"]
    assert metrics["test_tokens"] == int(supervised.sum())
    assert row["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(student_logits, targets)),
                                        rel=1e-5, abs=1e-6)
    assert row["kl_to_teacher"] == pytest.approx(float(kl), rel=1e-4, abs=1e-6)
    assert row["jsd_to_teacher"] == pytest.approx(float(jsd), rel=1e-4, abs=1e-6)
    assert row["ece"] == pytest.approx(calibration(student_logits, targets)["ece"], abs=1e-6)
    inherited = inherited_errors(student_logits, teacher_logits, targets)
    assert row["inherited_errors"] == inherited["inherited"]
    assert row["inherited_share"] == pytest.approx(inherited["inherited_share"], abs=1e-6)
    assert row["agreement"] == pytest.approx(float((student_logits.argmax(-1) == teacher_logits.argmax(-1))
                                                   .float().mean()), abs=1e-6)
    for name in ("teacher", "student"):
        cost = metrics[name]
        assert 0 < cost["latency_b1_ms"] <= cost["latency_b1_p95_ms"]
        assert cost["peak_memory_bytes"] > cost["activation_memory_bytes"] > 0
    assert metrics["student"]["size_bytes"] == sum(path.stat().st_size
                                                   for path in (tmp_path / "student").glob("*.safetensors"))
    assert metrics["teacher"]["size_bytes"] is None  # not exported: no size on disk to report
    assert metrics["teacher"]["peak_memory_bytes"] > metrics["student"]["peak_memory_bytes"]
    assert metrics["details"]["student"]["inherited"] == inherited
    assert metrics["details"]["student"]["reliability"]["count"] == calibration(student_logits, targets)["count"]
