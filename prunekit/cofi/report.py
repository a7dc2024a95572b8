"""report.json of a CoFi run: the target and how close the gates came, the chosen pruning checkpoint,
the schedule, time per phase, the multipliers and the settings, besides the fields every method writes
(prunekit.harness.common_report); for a latency target, the compact model's latency measured against
the teacher's."""
import tempfile
from dataclasses import asdict

import torch

from ..latency import latency_kept

WHAT = {"sparsity": "fraction of encoder parameters removed",
        "macs": "fraction of MACs kept, at the task's training length distribution",
        "latency": "fraction of the block latency kept (tables of the deploy runtime)"}


def method_report(run, compact, expected_end: float, layers: list[int], latency: dict | None) -> dict:
    """run: the finished cofi.pipeline.CoFiRun."""
    budget, config, prune, finetune = run.budget, run.config, run.prune_summary, run.finetune_summary
    return {
        "constraint": {"kind": budget.kind, "value": budget.value, "target_sparsity": budget.sparsity,
                       "what": WHAT[budget.kind], "expected_at_end": expected_end, "epsilon": config.sparsity_epsilon},
        "hidden_size": compact.config.hidden_size,
        **({"latency": latency} if latency else {}),
        "pruning_checkpoint": {"chosen": prune["chosen"], "step": (prune["best"] or {}).get("step", prune["steps"]),
                               "rule": "best dev metric while expected and deterministic sparsity are within epsilon "
                                       "of the target"},
        "finetune_kept": config.finetune_keep if finetune else None,
        "schedule": asdict(run.sched),
        "seconds": {**{k: round(v, 2) for k, v in run.watch.seconds.items()}, "prune_train": prune["train_seconds"],
                    "finetune_train": finetune["train_seconds"] if finetune else 0.0},
        "seconds_per_step": {"prune": prune["seconds_per_step"],
                             "finetune": finetune["seconds_per_step"] if finetune else None},
        "lambdas": {"lambda_1": run.lagrangian.lambda_1.item(), "lambda_2": run.lagrangian.lambda_2.item()},
        "distill_teacher_layers": layers,
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
    }


def latency_report(table: dict, budget, teacher, compact, config) -> dict:
    """For a latency target: the compact model's block latency by the tables, and its latency measured
    against the teacher's in ONNX Runtime at the deployment shape (exported, validated, interleaved)."""
    from prunekit.export.onnx_export import export_onnx  # onnx, onnxruntime: heavy, and only for a latency target
    from prunekit.export.optimize import time_graphs
    cfg, d = teacher.config, budget.deployment
    as_mask = lambda counts, n: (torch.arange(n)[None, :] < torch.tensor(counts)[:, None]).float()
    table_kept = latency_kept(table, as_mask(compact.config.num_heads, cfg.num_heads[0]),
                              as_mask(compact.config.ffn_dim, cfg.ffn_dim[0]))
    with tempfile.TemporaryDirectory(prefix="prunekit-latency-") as tmp:
        paths = {}
        for name, model in (("teacher", teacher), ("compact", compact)):
            export_onnx(model, f"{tmp}/{name}")
            paths[name] = f"{tmp}/{name}/model.onnx"
        ms = time_graphs(paths, cfg, shape=(d.latency_batch, d.latency_seq_len),
                         device="cuda" if str(config.device).startswith("cuda") else "cpu")
    return {"runtime": d.latency_runtime, "batch": d.latency_batch, "seq_len": d.latency_seq_len,
            "table_key": table.get("key"), "kept_by_table": table_kept * compact.config.hidden_size / cfg.hidden_size,
            "measured_ms": ms, "kept_measured": ms["compact"] / ms["teacher"]}
