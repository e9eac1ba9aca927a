"""Token-level KD loss, forward + backward: peak memory and time of ours against TRL's, same inputs, one run.

Compared (all on the same random inputs, hidden size 576, fp32, student hidden states and student head weight
requiring grad, teacher under no_grad, every token supervised):

* ``ours``: ``distill.losses.tokens.chunked_token_kd`` (chunk by chunk over tokens, never N x V logits).
* ``trl_dense``: the dense reference TRL ships, ``GKDTrainer.generalized_jsd_loss`` (a static method), called on
  logits made by the usual lm_head matmul (``hidden @ weight.T``), as ``GKDTrainer.compute_loss`` does.
* ``trl_chunked``: TRL 1.16's newer chunked loss, ``trl.trainer.distillation_trainer._chunked_divergence_loss``
  (what ``DistillationTrainer`` calls; tiled over tokens and vocabulary, torch fallback on CPU; private API).

Objective: TRL's generalised JSD with the same ``beta`` on every side (``--betas``; 0.5 is GKD's default, 0 is its
forward KL), temperature 1 (GKD's ``compute_loss`` passes no temperature to the loss, so 1 is what it trains with;
ours multiplies by T^2 which is then 1), mean over tokens. Before timing, the script checks on a small problem that
the three give the same loss and the same gradients (float64), and every measurement records its loss value so the
table can show that the large runs agree too.

Each measurement runs in a fresh subprocess (so peak RSS is that loss's alone): inputs are built, the process's
peak-RSS mark is reset (``/proc/self/clear_refs``), then the loss runs ``--repeats`` times (default 1: a call
takes minutes here); **peak** = the highest resident set during any run minus the resident set just before the
first (so it includes the gradients of the student's hidden states and head, the same on every side), **time** =
median of the runs (no warm-up: the inputs and code path were touched on a tiny problem first). A watchdog ends a
worker whose resident set passes ``--max-gib`` (the machine has 24 GiB shared with other jobs), and the table says
so; a dense run predicted (from a run at N / 8) to pass it is measured at the largest N / 2^k that fits and scaled
linearly in N, marked ``extrapolated_from``. Settings: V = 49,152 with N = 4,096 and V = 262,144 with N = 1,024
(``--settings``), then ours alone at larger N (``--scaling``), where the dense reference cannot run; its
peak there is extrapolated linearly in N from the measured point (dense memory is N x V x a constant).

    .venv/bin/python benchmarks/token_kd_memory.py [--betas 0 0.5] [--repeats 1] [--chunk-sizes 256 1024]
        [--scaling 16384] [--threads 1] [--quick]
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))

HIDDEN = 576
DEFAULT_SETTINGS = ["49152x4096", "262144x1024"]
GIB = 1024**3

# ----------------------------------------------------------------------------------------------------------------
# the three losses, each as "forward + backward on these inputs"
# ----------------------------------------------------------------------------------------------------------------


def make_inputs(vocab: int, tokens: int, dtype=torch.float32, seed: int = 0) -> dict:
    """Student/teacher hidden states and heads, scaled so that logits have a std of about 2.5 (a trained LM's)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, std=1.0):
        return (torch.randn(*shape, generator=gen, dtype=dtype) * std)

    return {
        "student_hidden": randn(tokens, HIDDEN).requires_grad_(True),
        "student_weight": randn(vocab, HIDDEN, std=0.1).requires_grad_(True),
        "teacher_hidden": randn(tokens, HIDDEN),
        "teacher_weight": randn(vocab, HIDDEN, std=0.1),
    }


def loss_ours(inputs: dict, beta: float, chunk_size: int) -> torch.Tensor:
    from distill.losses.tokens import chunked_token_kd

    return chunked_token_kd(
        inputs["student_hidden"], inputs["student_weight"], inputs["teacher_hidden"], inputs["teacher_weight"],
        divergence="jsd", beta=beta, temperature=1.0, chunk_size=chunk_size,
    )


def loss_trl_dense(inputs: dict, beta: float, chunk_size: int) -> torch.Tensor:
    from trl.experimental.gkd import GKDTrainer

    student_logits = F.linear(inputs["student_hidden"], inputs["student_weight"])
    with torch.no_grad():
        teacher_logits = F.linear(inputs["teacher_hidden"], inputs["teacher_weight"])
    return GKDTrainer.generalized_jsd_loss(student_logits, teacher_logits, beta=beta, temperature=1.0)


def loss_trl_chunked(inputs: dict, beta: float, chunk_size: int) -> torch.Tensor:
    from trl.trainer.distillation_trainer import _chunked_divergence_loss

    mask = torch.ones(inputs["student_hidden"].shape[0], dtype=torch.long)
    loss, _, _ = _chunked_divergence_loss(
        inputs["student_hidden"], inputs["teacher_hidden"], inputs["student_weight"], inputs["teacher_weight"],
        mask, beta, temperature=1.0,
    )
    return loss


LOSSES = {"ours": loss_ours, "trl_dense": loss_trl_dense, "trl_chunked": loss_trl_chunked}


def forward_backward(method: str, inputs: dict, beta: float, chunk_size: int) -> float:
    inputs["student_hidden"].grad = None
    inputs["student_weight"].grad = None
    loss = LOSSES[method](inputs, beta, chunk_size)
    loss.backward()
    return float(loss.detach())


# ----------------------------------------------------------------------------------------------------------------
# parity: the three compute the same thing (checked before any timing)
# ----------------------------------------------------------------------------------------------------------------


def parity(beta: float, vocab: int = 8192, tokens: int = 512, chunk_size: int = 128) -> dict:
    """Loss and gradients of each method against the dense reference, in float64 on a small problem."""
    reference = None
    out = {}
    for method in LOSSES:
        inputs = make_inputs(vocab, tokens, dtype=torch.float64, seed=1)
        loss = forward_backward(method, inputs, beta, chunk_size)
        grads = (inputs["student_hidden"].grad, inputs["student_weight"].grad)
        if reference is None:
            reference = (loss, grads)
        out[method] = {
            "loss": loss,
            "loss_rel_diff": abs(loss - reference[0]) / abs(reference[0]),
            "grad_max_rel_diff": max(float((g - r).abs().max() / r.abs().max()) for g, r in zip(grads, reference[1])),
        }
    return out


# ----------------------------------------------------------------------------------------------------------------
# one measurement = one subprocess
# ----------------------------------------------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _watchdog(limit_bytes: int) -> None:
    """Leave at once (exit code 3) if the resident set passes the limit: the machine is shared."""
    while True:
        if _status_kib("VmRSS") * 1024 > limit_bytes:
            print(json.dumps({"exceeded_bytes": limit_bytes}), flush=True)
            os._exit(3)
        time.sleep(0.02)


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    method, vocab, tokens = args.worker, args.vocab, args.tokens
    # import the method's modules and touch its code path on a tiny problem, so the baseline holds them
    forward_backward(method, make_inputs(256, 8), args.beta, args.chunk_size)
    inputs = make_inputs(vocab, tokens)
    threading.Thread(target=_watchdog, args=(int(args.max_gib * GIB),), daemon=True).start()
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets VmHWM (peak RSS) to the current RSS
    baseline = _status_kib("VmRSS") * 1024
    peaks, times, losses = [], [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        losses.append(forward_backward(method, inputs, args.beta, args.chunk_size))
        times.append(time.perf_counter() - start)
        peaks.append(_status_kib("VmHWM") * 1024 - baseline)
    print(json.dumps({
        "peak_bytes": max(peaks), "time_s": statistics.median(times), "times_s": times,
        "loss": losses[0], "grad_norm_hidden": float(inputs["student_hidden"].grad.norm()),
        "grad_norm_weight": float(inputs["student_weight"].grad.norm()),
    }), flush=True)


def measure(method: str, vocab: int, tokens: int, beta: float, chunk_size: int, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--worker", method, "--vocab", str(vocab), "--tokens", str(tokens),
               "--beta", str(beta), "--chunk-size", str(chunk_size), "--repeats", str(args.repeats),
               "--threads", str(args.threads), "--max-gib", str(args.max_gib)]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    record = json.loads(lines[-1]) if lines else {}
    if "exceeded_bytes" in record:
        return {"status": f"stopped above {args.max_gib:g} GiB"}
    if done.returncode != 0 or not record:
        return {"status": "failed", "stderr_tail": done.stderr[-2000:]}
    return {"status": "ok", **record}


# ----------------------------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------------------------




def gib(value: float | None) -> str:
    return "-" if value is None else f"{value / GIB:.3f}"


def measure_dense(vocab: int, tokens: int, beta: float, args: argparse.Namespace) -> dict:
    """The dense reference at N if its predicted peak fits under --max-gib, else at the largest N / 2^k that does.

    The prediction comes from a probe at N / 8 (dense peak is N x V x a constant). When the full N does not fit, peak
    and time are scaled linearly in N from the largest measured run and the record says ``extrapolated_from``.
    """
    probe_tokens = max(tokens // 8, 1)
    probe = measure("trl_dense", vocab, probe_tokens, beta, 0, args)
    if probe["status"] != "ok":
        return probe
    per_token = probe["peak_bytes"] / probe_tokens
    run_tokens = tokens
    while run_tokens > probe_tokens and per_token * run_tokens > 0.9 * args.max_gib * GIB:
        run_tokens //= 2
    run = probe if run_tokens == probe_tokens else measure("trl_dense", vocab, run_tokens, beta, 0, args)
    if run["status"] != "ok":
        return run
    record = {**run, "probe_tokens": probe_tokens, "probe_peak_bytes": probe["peak_bytes"],
              "predicted_peak_bytes": per_token * tokens}
    if run_tokens != tokens:
        scale = tokens / run_tokens
        record.update(extrapolated_from=run_tokens, measured_peak_bytes=run["peak_bytes"],
                      measured_time_s=run["time_s"], peak_bytes=run["peak_bytes"] * scale,
                      time_s=run["time_s"] * scale, loss=None)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--betas", type=float, nargs="+", default=[0.0, 0.5],
                        help="generalised JSD beta (TRL convention): 0 = forward KL, 0.5 = GKD's default")
    parser.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS, help="VOCABxTOKENS")
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[256, 1024],
                        help="tokens per chunk for ours (1024 is the function's default); sizes >= N are skipped "
                             "(one chunk is then the whole batch); sizes after the first only at the first beta")
    parser.add_argument("--scaling", type=int, nargs="*", default=[16384],
                        help="larger N at the first setting's V, first beta and first chunk size: ours alone")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per measurement (median reported)")
    # 1 thread: on a shared, oversubscribed CPU two OpenMP threads spin-wait on each other (measured 1.8x slower)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-gib", type=float, default=12.0, help="no run may pass this resident set")
    parser.add_argument("--skip-trl-chunked", action="store_true")
    parser.add_argument("--methods", nargs="+", choices=list(LOSSES), default=list(LOSSES),
                        help="measure only these (ratios need trl_dense in the same run)")
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the script runs")
    parser.add_argument("--output", default="token_kd_memory")
    # worker mode (internal)
    parser.add_argument("--worker", choices=list(LOSSES))
    parser.add_argument("--vocab", type=int)
    parser.add_argument("--tokens", type=int)
    parser.add_argument("--beta", type=float)
    parser.add_argument("--chunk-size", type=int, default=1024)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from common import write_results

    settings = [tuple(int(x) for x in s.split("x")) for s in args.settings]
    if args.quick:
        settings, args.scaling, args.chunk_sizes, args.max_gib = [(8192, 1024), (16384, 512)], [4096], [256], 1.5
    console = Console(width=150)

    parities = {}
    for beta in args.betas:
        parities[str(beta)] = parity(beta)
        for method, check in parities[str(beta)].items():
            worst = max(check["loss_rel_diff"], check["grad_max_rel_diff"])
            console.print(f"parity beta={beta:g} (float64 inputs, V=8192, N=512): {method} vs trl_dense, "
                          f"worst relative difference of loss/gradients {worst:.1e}")
            # TRL's chunked loss projects in float32 whatever the input dtype, hence its looser bound
            if worst > (1e-5 if method == "trl_chunked" else 1e-10):
                raise SystemExit(f"{method} disagrees with trl_dense at beta={beta}: {check}")

    jobs = []
    for vocab, tokens in settings:
        for beta in args.betas:
            jobs.append(("trl_dense", vocab, tokens, beta, None))
            if not args.skip_trl_chunked:
                jobs.append(("trl_chunked", vocab, tokens, beta, None))
            # the further chunk sizes only at the first beta: each measurement costs minutes here
            sizes = args.chunk_sizes if beta == args.betas[0] else args.chunk_sizes[:1]
            jobs += [("ours", vocab, tokens, beta, c) for c in sizes if c < tokens]
    jobs += [("ours", settings[0][0], n, args.betas[0], args.chunk_sizes[0]) for n in args.scaling]
    jobs = [job for job in jobs if job[0] in args.methods]

    results = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("measuring", total=len(jobs))
        for method, vocab, tokens, beta, chunk in jobs:
            progress.update(task, description=f"{method} V={vocab} N={tokens} beta={beta:g} chunk={chunk or '-'}")
            if method == "trl_dense":
                record = measure_dense(vocab, tokens, beta, args)
            else:
                record = measure(method, vocab, tokens, beta, chunk or 1024, args)
            results.append({"method": method, "vocab": vocab, "tokens": tokens, "beta": beta,
                            "chunk_size": chunk, **record})
            progress.advance(task)

    def dense_for(r):
        for d in results:
            if d["method"] == "trl_dense" and (d["vocab"], d["tokens"], d["beta"]) == (r["vocab"], r["tokens"],
                                                                                    r["beta"]):
                return d
        return None

    for r in results:
        dense = dense_for(r)
        if r["method"] == "trl_dense" or r["status"] != "ok":
            continue
        if dense is not None and dense["status"] == "ok":
            r["memory_ratio"] = r["peak_bytes"] / dense["peak_bytes"]
            r["time_ratio"] = r["time_s"] / dense["time_s"]
            r["dense_extrapolated"] = "extrapolated_from" in dense
            if dense.get("loss") is not None:
                r["loss_rel_diff_vs_dense"] = abs(r["loss"] - dense["loss"]) / abs(dense["loss"])
        else:
            # scaling rows: the dense peak this N would need, linear in N from the first setting's dense run
            base = next((d for d in results if d["method"] == "trl_dense" and d["vocab"] == r["vocab"]
                         and d["beta"] == r["beta"] and d["status"] == "ok"), None)
            if base is not None:
                r["dense_peak_bytes_extrapolated"] = base["peak_bytes"] * r["tokens"] / base["tokens"]

    table = Table(title=f"token KD forward+backward, hidden {HIDDEN}, fp32, {args.threads} threads; peak = RSS above "
                        f"baseline, time = median of {args.repeats}; ratios = method / trl_dense")
    for column in ["V", "N", "beta", "method", "chunk", "peak GiB", "time s", "memory ratio", "time ratio", "loss",
                   "note"]:
        table.add_column(column, justify="right")
    for r in results:
        ok = r["status"] == "ok"
        note = ""
        if "extrapolated_from" in r:
            note = (f"> {args.max_gib:g} GiB cap: measured at N={r['extrapolated_from']} "
                    f"({gib(r['measured_peak_bytes'])} GiB, {r['measured_time_s']:.1f} s), scaled x N")
        elif "dense_peak_bytes_extrapolated" in r:
            note = f"dense would need ~{gib(r['dense_peak_bytes_extrapolated'])} GiB"
        elif not ok:
            note = r["status"]
        table.add_row(
            str(r["vocab"]), str(r["tokens"]), f"{r['beta']:g}", r["method"], str(r["chunk_size"] or "-"),
            gib(r.get("peak_bytes")), f"{r['time_s']:.2f}" if ok else "-",
            f"{r['memory_ratio']:.3f}" if "memory_ratio" in r else "-",
            f"{r['time_ratio']:.3f}" if "time_ratio" in r else "-",
            f"{r['loss']:.6f}" if ok and r.get("loss") is not None else "-", note,
        )
    console.print(table)

    headline = {}
    for r in results:
        if r["method"] in ("ours", "trl_chunked") and "memory_ratio" in r:
            key = f"{r['method']}_V{r['vocab']}_N{r['tokens']}_beta{r['beta']:g}" + (
                f"_chunk{r['chunk_size']}" if r["chunk_size"] else "")
            headline[key] = {"memory_ratio": round(r["memory_ratio"], 4), "time_ratio": round(r["time_ratio"], 4),
                             "dense_extrapolated": r["dense_extrapolated"]}
    path = write_results(args.output, {
        "hidden": HIDDEN, "dtype": "float32", "threads": args.threads, "repeats": args.repeats,
        "temperature": 1.0, "max_gib": args.max_gib, "trl_version": _trl_version(),
        "goals": {"memory_ratio": 0.10, "time_ratio": 1.0},
        "ratios_vs_trl_dense": headline, "parity_float64": parities, "measurements": results,
    })
    console.print(f"wrote {path}")


def _trl_version() -> str:
    from importlib.metadata import version

    return version("trl")


if __name__ == "__main__":
    main()
