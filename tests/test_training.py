"""The fine-tuning loop, evaluation, resume, and the `finetune` / `eval` verbs, on a tiny model with
the real MiniLM tokenizer and small task files written here."""
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import prunekit
from conftest import small_model, synthetic_task, tiny_model
from prunekit.cli import main
from prunekit.data import Task, encode, load_task
from prunekit.config import PrunekitBertConfig
from prunekit.model import PrunekitBertForSequenceClassification
from prunekit.errors import PrunekitError
from prunekit.evaluation import evaluate, evaluate_task, torch_predictor
from prunekit.training import Trainer, TrainArgs, finetune

def args(tmp_path, name="run", **kw):
    base = dict(output=str(tmp_path / name), epochs=12, lr=5e-3, batch_size=8, eval_every=8, seed=0, progress=False)
    return TrainArgs(**{**base, **kw})


def weights(path):
    return load_file(str(path / "model.safetensors"))


@pytest.mark.slow
def test_finetune_learns_a_separable_task_and_keeps_the_best_model(tiny_model_dir, sst2_stsb_glue_dir, tmp_path,
                                                                   tok):
    summary = finetune(str(tiny_model_dir), "sst2", args(tmp_path), glue_dir=sst2_stsb_glue_dir, max_length=64)
    out = tmp_path / "run"
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(8, 97, 8))   # 64 examples / 8 = 8 steps an epoch, 12 epochs
    assert log[0]["accuracy"] == 0.5 and summary["best"]["accuracy"] >= 0.9  # it learned
    assert log[-1]["train_loss"] < 0.5 * log[0]["train_loss"]
    best = max(log, key=lambda r: r["accuracy"])  # first of the best, as "improved" is a strict >
    assert summary["best"] == best and summary["final"] == log[-1]
    assert json.loads((out / "metrics.json").read_text())["best"] == best
    assert not (out / "last").exists()  # a finished run leaves nothing to resume
    # the directory holds the best model, with the task's labels, and it scores what the log says
    model = prunekit.load_model(out)
    assert model.config.id2label == {0: "negative", 1: "positive"} and model.config.finetuning_task == "sst2"
    task = load_task("sst2", tok, glue_dir=sst2_stsb_glue_dir, max_length=64, with_train=False)
    assert evaluate(torch_predictor(model), task.dev, "sst2", batch_size=5) == {"accuracy": best["accuracy"]}


@pytest.mark.slow
def test_regression_task_trains_with_float_labels_and_reports_correlations(sst2_stsb_glue_dir, tmp_path, tok):
    small_model(tok, num_labels=1).save_pretrained(tmp_path / "regressor")
    finetune(str(tmp_path / "regressor"), "stsb", args(tmp_path, max_steps=3, eval_every=3),
             glue_dir=sst2_stsb_glue_dir, max_length=64)
    out = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert out["main_metric"] == "spearman" and set(out["final"]) >= {"pearson", "spearman"}
    assert prunekit.load_model(tmp_path / "run").config.num_labels == 1


@pytest.mark.slow
def test_same_seed_same_weights_and_another_seed_differs(tiny_model_dir, sst2_stsb_glue_dir, tmp_path):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        finetune(str(tiny_model_dir), "sst2", args(tmp_path, name, max_steps=5, eval_every=5, seed=seed),
                 glue_dir=sst2_stsb_glue_dir, max_length=64)
    a, b, c = (weights(tmp_path / n) for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


class Interrupt(Exception):
    pass


class InterruptingTrainer(Trainer):
    """Dies in the middle of step `at`, after the loop has saved some checkpoints."""
    at = None

    def loss(self, batch):
        if self.step + 1 == self.at:
            raise Interrupt
        return super().loss(batch)


def test_resume_after_an_interruption_ends_with_the_same_weights(tok, sst2_stsb_glue_dir, tmp_path):
    task = load_task("sst2", tok, glue_dir=sst2_stsb_glue_dir, max_length=64, max_train_samples=40)  # 5 steps an epoch
    kw = dict(epochs=2, eval_every=4, save_every=3, lr=3e-3)  # dropout is on: the RNG state must come back too
    straight = Trainer(small_model(tok), task, args(tmp_path, "straight", **kw))
    straight.fit()

    broken = InterruptingTrainer(small_model(tok), task, args(tmp_path, "broken", **kw))
    broken.at = 8  # checkpoints at steps 3 and 6; step 6 is in epoch 1, one batch past the boundary
    with pytest.raises(Interrupt):
        broken.fit()
    state = json.loads((tmp_path / "broken" / "last" / "state.json").read_text())
    assert state["step"] == 6 and [r["step"] for r in state["history"]] == [4]
    resumed = Trainer(tiny_model(seed=7, vocab_size=tok.vocab_size, max_position_embeddings=64, num_labels=2), task,
                      args(tmp_path, "broken", **kw))  # other initial weights: the checkpoint must replace them
    resumed.model.tokenizer = tok
    resumed.fit(resume=True)

    final = {k: v.detach().clone() for k, v in straight.model.state_dict().items()}
    assert all(torch.equal(final[k], v) for k, v in resumed.model.state_dict().items())
    assert resumed.history == straight.history
    assert (tmp_path / "broken" / "log.jsonl").read_text() == (tmp_path / "straight" / "log.jsonl").read_text()
    assert json.loads((tmp_path / "broken" / "metrics.json").read_text())["best"] == straight.best
    with pytest.raises(PrunekitError, match="nothing to resume"):
        Trainer(small_model(tok), task, args(tmp_path, "broken", **kw)).fit(resume=True)


def test_resume_refuses_changed_settings(tok, sst2_stsb_glue_dir, tmp_path):
    task = load_task("sst2", tok, glue_dir=sst2_stsb_glue_dir, max_length=64, max_train_samples=16)
    t = InterruptingTrainer(small_model(tok), task, args(tmp_path, save_every=1))
    t.at = 2
    with pytest.raises(Interrupt):
        t.fit()
    with pytest.raises(PrunekitError, match="different settings: lr 0.005 then, 0.001 now"):
        Trainer(small_model(tok), task, args(tmp_path, save_every=1, lr=1e-3)).fit(resume=True)


def test_evaluate_scores_in_the_examples_order_whatever_the_batching(tok):
    texts = ["a", "a b c d e f", "a b", "a b c d", "a b c", "a b c d e f g h i"]
    ex = encode(tok, texts, None, [1, 0, 1, 1, 0, 0], 64)

    def predict(batch):  # predicts 1 for an odd token count; returns numpy, as ORT would
        n = batch["attention_mask"].sum(1)
        return torch.stack([1.0 - n % 2, (n % 2).float()], 1).numpy()
    # token counts (with [CLS], [SEP]) 3, 8, 4, 6, 5, 11 -> predictions 1, 0, 0, 0, 1, 1; right: items 0, 1
    # (left in length order, the predictions 1, 0, 1, 0, 0, 1 would score 4/6)
    for bs in (1, 4, 128):
        assert evaluate(predict, ex, "sst2", batch_size=bs) == {"accuracy": pytest.approx(2 / 6)}
    # tp 1 (item 0), fp 2 (items 4, 5), fn 2 (items 2, 3): f1 = 2 / (2 + 2 + 2)
    assert evaluate(predict, ex, "mrpc", batch_size=4) == pytest.approx({"f1": 2 / 6, "accuracy": 2 / 6})


def test_mnli_reports_matched_and_mismatched_accuracy(tok):
    ex = lambda labels: encode(tok, ["x"] * len(labels), ["y"] * len(labels), labels, 16)
    task = Task("mnli", 3, False, ["entailment", "neutral", "contradiction"], [],
                {"dev_matched": ex([0, 0, 1, 0]), "dev_mismatched": ex([0, 2])})
    always_entailment = lambda batch: torch.tensor([[1.0, 0.0, 0.0]]).repeat(len(batch["input_ids"]), 1)
    assert evaluate_task(always_entailment, task) == {"accuracy": 0.75, "accuracy_mm": 0.5}


def test_trainer_lr_warms_up_then_decays_linearly(tmp_path):
    model = PrunekitBertForSequenceClassification(PrunekitBertConfig(
        vocab_size=30, hidden_size=8, head_dim=4, num_heads=[2], ffn_dim=[8], num_labels=2))
    ex = [{"input_ids": [1, 2], "token_type_ids": [0, 0], "label": i % 2} for i in range(12)]
    task = Task("toy", 2, False, ["a", "b"], ex, {"dev": ex})
    trainer = Trainer(model, task, TrainArgs(output=str(tmp_path), epochs=12, batch_size=1, lr=1.0,
                                             warmup_ratio=4 / 144, progress=False))
    lrs = []
    for _ in range(145):
        lrs.append(trainer.scheduler.get_last_lr()[0])
        trainer.optimizer.step()
        trainer.scheduler.step()
    assert trainer.total_steps == 144
    assert [lrs[s] for s in (0, 2, 4, 74, 144)] == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0])


# ---------------------------------------------------------------------------------------------
# the verbs


def test_finetune_and_eval_verbs(tiny_model_dir, sst2_stsb_glue_dir, tmp_path, capsys):
    out = tmp_path / "teacher"
    cmd = ["finetune", "--model", str(tiny_model_dir), "--task", "SST-2", "--glue-dir", str(sst2_stsb_glue_dir),
           "--output", str(out), "--max-steps", "3", "--max-length", "64", "--lr", "1e-3", "--device", "cpu",
           "--threads", "1"]
    assert main(cmd) == 0
    best = json.loads((out / "metrics.json").read_text())["best"]
    summary, _, where = capsys.readouterr().out.splitlines()[-1].partition("; model in ")  # after the eval lines
    assert summary == f"best accuracy {best['accuracy']:.4f} at step {best['step']} of 3"
    assert re.fullmatch(rf"{re.escape(str(out))} \(\d+ s training, \d+\.\d{{3}} s/step\)", where), where
    assert json.loads((out / "train_args.json").read_text())["max_steps"] == 3
    assert main(cmd) == 2
    assert "already exists; pass --overwrite to replace it" in capsys.readouterr().err
    assert main(cmd + ["--overwrite"]) == 0
    assert main(cmd + ["--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err

    best = json.loads((out / "metrics.json").read_text())["best"]["accuracy"]
    assert main(["eval", "--model", str(out), "--glue-dir", str(sst2_stsb_glue_dir),
                 "--output", str(tmp_path / "m.json"), "--max-length", "64"]) == 0  # the task: from the model's config
    assert f"sst2 (dev 32 examples): accuracy {best:.4f}" in capsys.readouterr().out
    written = json.loads((tmp_path / "m.json").read_text())
    assert written["metrics"] == {"accuracy": best} and written["examples"] == {"dev": 32}


def test_eval_on_a_compact_model(tiny_model_dir, sst2_stsb_glue_dir, tmp_path, capsys):
    model = prunekit.load_model(tiny_model_dir)
    compact = prunekit.prune(model, prunekit.Masks(z_head=torch.tensor([[1., 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]])))
    compact.save_pretrained(tmp_path / "compact")
    assert main(["eval", "--model", str(tmp_path / "compact"), "--task", "sst2", "--glue-dir", str(sst2_stsb_glue_dir),
                 "--output", str(tmp_path / "m.json")]) == 0
    # the printed figure is the compact model's own accuracy on the 32 dev sentences, scored independently here
    task = load_task("sst2", model.tokenizer, glue_dir=sst2_stsb_glue_dir, with_train=False)
    want = evaluate(torch_predictor(prunekit.load_model(tmp_path / "compact")), task.dev, "sst2", batch_size=7)
    assert capsys.readouterr().out.splitlines() == [f"sst2 (dev 32 examples): accuracy {want['accuracy']:.4f}",
                                                    f"metrics written to {tmp_path / 'm.json'}"]
    assert json.loads((tmp_path / "m.json").read_text())["metrics"] == want


def test_custom_files_through_the_verbs(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"body": f"{w} film", "tag": t}) + "\n"
                                                  for w, t in (("good", "pos"), ("bad", "neg")) * 8))
    (tmp_path / "dev.csv").write_text("body,tag\ngreat film,pos\nawful film,neg\n")
    out = tmp_path / "custom"
    assert main(["finetune", "--model", str(tiny_model_dir), "--task", "reviews",
                 "--train-file", str(tmp_path / "train.jsonl"), "--dev-file", str(tmp_path / "dev.csv"),
                 "--text-columns", "body", "--label-column", "tag",
                 "--output", str(out), "--max-steps", "2"]) == 0
    assert prunekit.load_model(out).config.label2id == {"neg": 0, "pos": 1}
    (tmp_path / "dev2.csv").write_text("body,tag\nfine film,pos\nodd film,meh\n")
    assert main(["eval", "--model", str(out), "--dev-file", str(tmp_path / "dev2.csv"), "--text-columns", "body",
                 "--label-column", "tag"]) == 2
    assert "dev2.csv line 3: label 'meh' is not in the label set (neg, pos)" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--task", "sst3"], "unknown task 'sst3'"),
    (["--task", "qnli"], "QNLI not found"),
    (["--task", "sst2", "--glue-dir", "/nonexistent/glue"], "GLUE directory not found"),
])
def test_finetune_bad_input_is_one_line_exit_2(tiny_model_dir, sst2_stsb_glue_dir, tmp_path, capsys, extra, message):
    cmd = ["finetune", "--model", str(tiny_model_dir), "--output", str(tmp_path / "x"),
           "--glue-dir", str(sst2_stsb_glue_dir)] + extra
    assert main(cmd) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()  # nothing written


def test_eval_with_the_wrong_task_or_a_model_without_a_task(tiny_model_dir, sst2_stsb_glue_dir, tmp_path, capsys):
    assert main(["eval", "--model", str(tiny_model_dir), "--glue-dir", str(sst2_stsb_glue_dir)]) == 2
    assert "give --task" in capsys.readouterr().err
    assert main(["eval", "--model", str(tiny_model_dir), "--task", "stsb", "--glue-dir", str(sst2_stsb_glue_dir)]) == 2
    assert "the model has 2 outputs but task stsb has 1 labels" in capsys.readouterr().err


def test_overwrite_refuses_a_directory_that_is_not_a_run(tiny_model_dir, sst2_stsb_glue_dir, tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.tex").write_text("precious")
    assert main(["finetune", "--model", str(tiny_model_dir), "--task", "sst2", "--glue-dir", str(sst2_stsb_glue_dir),
                 "--output", str(tmp_path / "notes"), "--overwrite"]) == 2
    assert "does not look like a prunekit output" in capsys.readouterr().err
    assert (tmp_path / "notes" / "thesis.tex").read_text() == "precious"


@pytest.mark.slow
def test_ragged_tsv_from_the_command_line_has_no_traceback(tiny_model_dir, tmp_path):
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "train.tsv").write_text("sentence\tlabel\ngood\t1\nbad\n")
    (tmp_path / "SST-2" / "dev.tsv").write_text("sentence\tlabel\ngood\t1\n")
    r = subprocess.run([sys.executable, "-m", "prunekit.cli", "finetune", "--model", str(tiny_model_dir),
                        "--task", "sst2", "--glue-dir", str(tmp_path), "--output", str(tmp_path / "out")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        f"prunekit finetune: error: {tmp_path}/SST-2/train.tsv line 3: 1 tab-separated fields, expected 2 (ragged row)"]


def test_interrupted_finetune_verb_resumes_to_the_same_model(tiny_model_dir, sst2_stsb_glue_dir, tmp_path, monkeypatch,
                                                             capsys):
    base = ["finetune", "--model", str(tiny_model_dir), "--task", "sst2", "--glue-dir", str(sst2_stsb_glue_dir),
            "--max-length", "64", "--epochs", "2", "--batch-size", "16", "--lr", "1e-3", "--save-every", "3"]
    assert main(base + ["--output", str(tmp_path / "straight")]) == 0

    real_step = Trainer.train_step

    def ctrl_c_at_step_6(self, batch):
        if self.step == 5:
            raise KeyboardInterrupt
        return real_step(self, batch)
    monkeypatch.setattr(Trainer, "train_step", ctrl_c_at_step_6)
    assert main(base + ["--output", str(tmp_path / "cut")]) == 130
    err = capsys.readouterr().err  # (the progress bar shares stderr)
    assert err.count("prunekit finetune: interrupted\n") == 1 and "Traceback" not in err
    monkeypatch.setattr(Trainer, "train_step", real_step)
    assert main(base + ["--output", str(tmp_path / "cut"), "--resume"]) == 0
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "cut")  # the best model
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the step-8 train loss and dev score come from steps run after the resume (from step 3)
    assert (tmp_path / "cut" / "log.jsonl").read_text() == (tmp_path / "straight" / "log.jsonl").read_text()


FAULTS_OF_A_BF16_STEP = """
import resource, sys, torch
from conftest import tiny_model
if sys.argv[1] == "keep":
    from prunekit.machine import keep_freed_memory
    assert keep_freed_memory()
torch.set_num_threads(1)
model = tiny_model(hidden_size=256, head_dim=32, num_heads=[8, 8], ffn_dim=[1024, 1024], vocab_size=1000).train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
ids = torch.randint(5, 1000, (32, 16))
def step():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.zeros(32, dtype=torch.long)).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def thp_always() -> bool:
    try:
        return "[always]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the allocator setting is glibc's")
@pytest.mark.skipif(thp_always(), reason="with transparent huge pages always on, few faults are left to remove")
def test_keeping_freed_memory_stops_the_page_faults_of_a_training_step():
    """Every bf16 step frees and reallocates the same buffers (autocast's weight copies, activations,
    gradients); with keep_freed_memory (the Trainer and the Fisher pass call it) the steps after the
    first reuse those pages instead of faulting them in again. Fresh processes: the setting is
    process-wide."""
    def faults(mode):
        out = subprocess.run([sys.executable, "-c", FAULTS_OF_A_BF16_STEP, mode], capture_output=True, text=True,
                             env={**os.environ, "PRUNEKIT_MALLOC": "", "PYTHONPATH": str(Path(__file__).parent)},
                             check=True)
        return int(out.stdout.split()[-1])
    default, kept = faults("default"), faults("keep")
    assert kept * 3 < default   # by default glibc unmaps or trims the big blocks on free: their pages fault again


def test_the_trainer_keeps_freed_memory(monkeypatch):
    from prunekit import machine
    monkeypatch.setattr(machine, "_heap_kept", None)   # as in a fresh process
    model = tiny_model()
    Trainer(model, synthetic_task(model), TrainArgs(output="unused", progress=False))
    assert machine._heap_kept is (platform.libc_ver()[0] == "glibc")
