"""CoFi (prunekit.cofi): gates, expected size, Lagrangian, distillation, the loop, resume, the CLI."""
import json
import math

import pytest
import torch

from conftest import random_batch, synthetic_task, tiny_model
from prunekit import Masks, prune
from prunekit.cli import main
from prunekit.budget import Budget, Deployment
from prunekit.cofi import CoFiConfig, ExpectedCost, Gates, Lagrangian, compress
from prunekit.distill import LayerDistiller, match_layers, prediction_loss, present_layers, teacher_layers
from prunekit.cofi.gates import BETA, GAMMA, LOG_ALPHA_RANGE, ZETA
from prunekit.cofi.sparsity import target_at
from prunekit.config import PrunekitBertConfig
from prunekit.cost import macs, param_counts

QUICK = dict(batch_size=8, progress=False, eval_every=12)  # tiny runs: 12 steps per epoch of 96 examples


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- gates


def hard_concrete_cdf(x, log_alpha):
    """P(z <= x) of the stretched, clipped hard concrete, 0 < x < 1 (Louizos et al. 2018, eq. 10-13)."""
    xn = (x - GAMMA) / (ZETA - GAMMA)
    return 1 / (1 + math.exp(-(BETA * math.log(xn / (1 - xn)) - log_alpha)))


@pytest.mark.parametrize("log_alpha", [-2.0, 0.0, 1.5])
def test_gate_samples_have_the_hard_concrete_distribution(log_alpha):
    gates = Gates(tiny_model().config, names=("z_int",))
    with torch.no_grad():
        gates.log_alpha["z_int"].fill_(log_alpha)
    torch.manual_seed(0)
    with torch.no_grad():
        z = torch.cat([gates.sample().z_int.flatten() for _ in range(2000)])        # 72,000 draws
    p0 = hard_concrete_cdf(1e-12, log_alpha)                                       # P(z = 0)
    p1 = 1 - hard_concrete_cdf(1 - 1e-12, log_alpha)                                # P(z = 1)
    grid = torch.linspace(0, 1, 20001)[1:-1]
    mean = float(sum(1 - hard_concrete_cdf(float(x), log_alpha) for x in grid[::10])) / len(grid[::10])
    sd = lambda p: math.sqrt(p * (1 - p) / z.numel())
    assert float((z == 0).float().mean()) == pytest.approx(p0, abs=5 * sd(p0))
    assert float((z == 1).float().mean()) == pytest.approx(p1, abs=5 * sd(p1))
    assert float(z.mean()) == pytest.approx(mean, abs=0.005)
    assert gates.prob_nonzero()["z_int"].mean().item() == pytest.approx(1 - p0, abs=1e-5)


def test_gates_start_as_documented_and_clamp():
    gates = Gates(tiny_model().config)
    la = gates.log_alpha
    assert la["z_int"].mean().abs() < 0.01 and la["z_head"].mean().item() == pytest.approx(10, abs=0.01)
    assert la["z_hidden"].shape == (16,) and la["z_head"].shape == (3, 4) and la["z_mha"].shape == (3,)
    gates.clamp_()
    assert la["z_head"].max().item() == pytest.approx(LOG_ALPHA_RANGE[1])
    # at the ceiling a gate is non-zero with probability 0.998
    assert gates.prob_nonzero()["z_head"].min().item() == pytest.approx(0.998, abs=1e-3)


def test_deterministic_masks_keep_the_expected_count_with_soft_values():
    gates = Gates(tiny_model().config)
    with torch.no_grad():
        gates.log_alpha["z_head"].copy_(torch.tensor([[4.0, -4.0, 3.0, -3.0]] * 3))   # 2 of 4 expected per layer
        gates.log_alpha["z_mha"].copy_(torch.tensor([4.0, -4.0, 0.0]))               # P(z != 0) 1.0, 0.1, 0.83
    m = gates.deterministic()
    assert ((m.z_head != 0).sum(1) == 2).all()
    assert torch.equal(m.z_head[:, 1], torch.zeros(3)) and torch.equal(m.z_head[:, 3], torch.zeros(3))
    kept = m.z_head[m.z_head != 0]
    assert ((kept > 0.9) & (kept < 1)).all()                                  # the soft score, not 1
    assert m.z_mha[1] == 0 and m.z_mha[0] > 0 and m.z_mha[2] > 0              # dropped iff P(z != 0) < 0.5


# ---------------------------------------------------------------- expected size and the Lagrangian


@pytest.mark.parametrize("kind", ["sparsity", "macs"])
def test_expected_cost_of_certain_gates_is_the_exact_cost_of_the_compact_model(kind):
    model = tiny_model(hidden_size=20, head_dim=5, num_heads=[4, 4, 4], ffn_dim=[7, 7, 7])
    lengths = [3, 9, 12, 5]
    cost = ExpectedCost(model.config, kind, lengths)
    masks = Masks(z_mha=torch.tensor([1.0, 0.0, 1.0]), z_head=torch.tensor([[1, 0, 1, 1], [1, 1, 1, 1], [0, 0, 1, 0.]]),
                  z_ffn=torch.tensor([1.0, 1.0, 0.0]), z_int=(torch.rand(3, 7) > 0.4).float(),
                  z_hidden=(torch.arange(20) % 3 != 0).float())
    compact = prune(model, masks).config
    exact = param_counts(compact)["encoder"] if kind == "sparsity" else macs(compact, lengths=lengths)["total"]
    assert float(cost.expected({n: t for n, t in masks.items()})) == pytest.approx(exact, rel=1e-6)
    assert float(cost.sparsity({n: torch.ones_like(t) for n, t in masks.items()})) == pytest.approx(0.0, abs=1e-6)


def test_expected_sparsity_of_bert_base_matches_cofi_s_size():
    base = PrunekitBertConfig(hidden_size=768, head_dim=64, num_heads=[12] * 12, ffn_dim=[3072] * 12)
    cost = ExpectedCost(base, "sparsity")
    assert cost.dense == 85_017_600  # CoFi's prunable model size M for BERT-base
    half_heads = {"z_head": torch.full((12, 12), 0.5)}
    # half the heads: about half the attention parameters (the O bias per layer stays)
    assert float(cost.sparsity(half_heads)) == pytest.approx(12 * 6 * (4 * 64 * 768 + 3 * 64) / 85_017_600)


def test_target_warms_up_linearly_after_pre_pruning():
    assert [target_at(s, 0.6, pre_steps=10, warmup_steps=20) for s in (0, 9, 10, 20, 30, 99)] == \
        pytest.approx([0, 0, 0, 0.3, 0.6, 0.6])


def lambda_after_ascent(gap):
    lag = Lagrangian()
    opt = torch.optim.AdamW(lag.parameters(), lr=0.01, weight_decay=0.0, maximize=True)
    for _ in range(5):
        lag(torch.tensor(0.5 + gap), 0.5).backward()
        opt.step()
        opt.zero_grad()
    return lag.lambda_1.item(), lag.lambda_2.item()


def test_lambda_rises_over_target_and_falls_under_it():
    l1_over, l2_over = lambda_after_ascent(+0.1)     # too sparse: lambda_1 > 0 pushes s back down
    l1_under, l2_under = lambda_after_ascent(-0.1)   # not sparse enough: lambda_1 < 0 pushes s up
    assert l1_over > 0 > l1_under
    assert l2_over > 0 and l2_under > 0               # the quadratic term only tightens


def test_the_lagrangian_pushes_the_gates_toward_the_target():
    """With multipliers that have risen, one gate step moves the expected sparsity toward t from either side."""
    config = tiny_model().config
    cost = ExpectedCost(config, "sparsity")
    for start, target in ((0.0, 0.5), (4.0, 0.3)):
        gates = Gates(config)
        with torch.no_grad():
            for la in gates.log_alpha.values():
                la.fill_(start)
        lag = Lagrangian()
        s0 = cost.sparsity(gates.prob_nonzero()).item()
        with torch.no_grad():
            lag.lambda_1.fill_(1.0 if s0 > target else -1.0)
            lag.lambda_2.fill_(1.0)
        opt = torch.optim.AdamW(gates.parameters(), lr=0.1, weight_decay=0.0)
        lag(cost.sparsity(gates.prob_nonzero()), target).backward()
        opt.step()
        s1 = cost.sparsity(gates.prob_nonzero()).item()
        assert abs(s1 - target) < abs(s0 - target), (start, target, s0, s1)


# ---------------------------------------------------------------- distillation


def test_teacher_layers_are_proportional_to_depth():
    assert teacher_layers(12) == [2, 5, 8, 11]
    assert teacher_layers(6) == [2, 5]
    assert teacher_layers(2) == [1] and teacher_layers(1) == [0]


@pytest.mark.parametrize("seed", range(5))
def test_layer_map_goes_down_strictly_and_only_to_present_layers(seed):
    g = torch.Generator().manual_seed(seed)
    dist = torch.rand(4, 12, generator=g)
    present = (torch.rand(12, generator=g) > 0.4).tolist()
    pairs = match_layers(dist, [2, 5, 8, 11], present)
    students = [j for _, j in pairs]
    assert [i for i, _ in pairs] == [11, 8, 5, 2][:len(pairs)]                 # top-down
    assert all(present[j] for j in students)
    assert all(a > b for a, b in zip(students, students[1:]))                  # strictly lower each time
    below = 12
    for i, j in pairs:  # each match is the closest present candidate below the previous one
        row = [2, 5, 8, 11].index(i)
        assert dist[row, j] == min(dist[row, c] for c in range(below) if present[c])
        below = j


def test_layer_map_skips_a_vanished_layer_even_when_it_is_closest_and_stops_when_none_is_left():
    dist = torch.tensor([[0.5, 0.4, 0.0, 0.9],     # teacher layer 1: closest to student 2, which vanished
                         [0.9, 0.1, 0.0, 0.5]])    # teacher layer 3
    pairs = match_layers(dist, [1, 3], present=[True, True, False, True])
    assert pairs == [(3, 1), (1, 0)]
    assert match_layers(dist, [1, 3], present=[True, False, False, False]) == [(3, 0)]  # nothing left for layer 1
    assert match_layers(dist, [1, 3], present=[False] * 4) == []


def test_prediction_distillation_is_kl_times_t_squared_and_mse_for_regression():
    s, t = torch.randn(5, 3), torch.randn(5, 3)
    T = 2.0
    p_t = torch.softmax(t / T, -1)
    want = (p_t * (p_t.log() - torch.log_softmax(s / T, -1))).sum(-1).mean() * T * T
    assert prediction_loss(s, t, T, regression=False).item() == pytest.approx(want.item(), rel=1e-5)
    assert prediction_loss(s[:, :1], t[:, :1], T, regression=True).item() == pytest.approx(
        ((s[:, 0] - t[:, 0]) ** 2).mean().item(), rel=1e-6)


def test_layer_loss_ignores_padding_and_starts_from_an_identity_projection():
    d = LayerDistiller(8, [1])
    assert torch.equal(d.proj.weight, torch.eye(8))
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    states = lambda: tuple(torch.randn(2, 3, 8) for _ in range(3))
    torch.manual_seed(0)
    s, t = states(), states()
    loss, pairs = d(s, t, mask, present=[True, True])
    s2 = tuple(x.clone() for x in s)
    for x in s2:
        x[mask == 0] = 1e3                                        # only padding changes
    loss2, _ = d(s2, t, mask, present=[True, True])
    assert loss2.item() == pytest.approx(loss.item())
    j = pairs[0][1]
    want = ((s[j + 1][mask.bool()] - t[2][mask.bool()]) ** 2).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)


def test_present_layers_follow_config_and_masks():
    cfg = PrunekitBertConfig(hidden_size=8, head_dim=4, num_heads=[2, 0, 2], ffn_dim=[4, 4, 0])
    assert present_layers(cfg) == [True, True, True]
    cfg = PrunekitBertConfig(hidden_size=8, head_dim=4, num_heads=[2, 2, 2], ffn_dim=[4, 4, 4])
    masks = Masks(z_mha=torch.tensor([1.0, 0.0, 1.0]), z_int=torch.tensor([[1.0] * 4, [0.0] * 4, [0.0] * 4]))
    assert present_layers(cfg, masks) == [True, False, True]


# ---------------------------------------------------------------- the loop


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One short CoFi run on a tiny model: 20 epochs (240 steps) of pruning to sparsity 0.5, 2 of fine-tuning."""
    teacher = tiny_model()
    task = synthetic_task(teacher)
    out = tmp_path_factory.mktemp("cofi")
    result = compress(teacher, task, Budget("sparsity", 0.5), CoFiConfig(
        prune_epochs=20, finetune_epochs=2, reg_lr=0.1, **QUICK), workdir=out)
    return teacher, task, out, result


def test_expected_sparsity_tracks_the_target(tiny_run):
    _, _, out, result = tiny_run
    log = [json.loads(line) for line in (out / "prune" / "log.jsonl").read_text().splitlines()]
    late = [r for r in log if r["step"] >= 180]             # the target reached 0.5 at step 120
    assert late and all(abs(r["expected_sparsity"] - 0.5) < 0.02 for r in late)
    assert all(r["target"] == pytest.approx(min(0.5, 0.5 * r["step"] / 120), abs=1e-4) for r in log)
    assert abs(result.report["sparsity"] - 0.5) < 0.05    # the compact model's real sparsity
    assert result.report["pruning_checkpoint"]["chosen"] == "best"


def test_compact_model_after_surgery_equals_the_deterministically_masked_model():
    teacher = tiny_model()
    gates = Gates(teacher.config)
    with torch.no_grad():
        for la in gates.log_alpha.values():
            la.copy_(torch.randn(la.shape) * 3)
    masks = gates.deterministic()
    assert any(((t != 0) & (t != 1)).any() for _, t in masks.items())   # real-valued kept values
    compact = prune(teacher, masks)
    batch = random_batch(batch=4, seq=11)
    with torch.no_grad():
        assert (compact(**batch).logits - teacher(**batch, masks=masks).logits).abs().max() < 1e-5


def test_tiny_run_report_and_model(tiny_run):
    teacher, task, _, result = tiny_run
    r = result.report
    assert r["method"] == "cofi" and r["constraint"]["kind"] == "sparsity"
    assert set(r["dev_metrics"]) == {"teacher", "pruned", "finetuned", "finetuned_final"}
    assert r["compact_vs_masked_max_abs_diff"] < 1e-5
    assert r["schedule"]["prune_steps"] == 240 and r["schedule"]["finetune_steps"] == 24
    assert [x["heads"] for x in r["structure"]] == result.model.config.num_heads
    assert result.model.config.hidden_size == int((result.masks.z_hidden != 0).sum())
    assert {"prune_train", "finetune_train", "evaluation", "surgery"} <= set(r["seconds"])


@pytest.mark.slow
def test_macs_target_lands_within_one_percent(tmp_path):
    # units fine enough for a 1% landing: a head ~1% of the MACs, an FFN unit 0.3%, a hidden dim 0.8%
    teacher = tiny_model(hidden_size=128, head_dim=2, num_heads=[16, 16], ffn_dim=[128, 128])
    task = synthetic_task(teacher)
    result = compress(teacher, task, Budget("macs", 0.4), CoFiConfig(
        prune_epochs=15, finetune_epochs=0, reg_lr=0.1, **QUICK))
    assert result.report["constraint"]["kind"] == "macs"
    assert result.report["macs_kept"] == pytest.approx(0.4, abs=0.01)


def interrupt_at(monkeypatch, step, phase="prune"):
    """Make a CoFi phase's train_step raise (a Ctrl-C) once it has done `step` steps; returns the undo."""
    from prunekit.cofi.trainer import CoFiTrainer
    from prunekit.distill import DistillTrainer
    real = DistillTrainer.train_step

    def crashing(self, batch):
        if ("prune" if isinstance(self, CoFiTrainer) else "finetune") == phase and self.step == step:
            raise KeyboardInterrupt
        return real(self, batch)
    monkeypatch.setattr(DistillTrainer, "train_step", crashing)
    return lambda: monkeypatch.setattr(DistillTrainer, "train_step", real)


@pytest.mark.slow
@pytest.mark.parametrize("phase_step", [("prune", 31), ("finetune", 9)])
def test_an_interrupted_run_resumed_equals_the_uninterrupted_one(tmp_path, monkeypatch, phase_step):
    phase, step = phase_step
    teacher = tiny_model()
    task = synthetic_task(teacher, n_train=48)
    settings = CoFiConfig(prune_epochs=8, finetune_epochs=3, reg_lr=0.1, save_every=5, **QUICK)
    torch.manual_seed(123)
    whole = compress(teacher, task, Budget("sparsity", 0.4), settings, workdir=tmp_path / "whole")

    torch.manual_seed(123)
    undo = interrupt_at(monkeypatch, step, phase)
    with pytest.raises(KeyboardInterrupt):
        compress(teacher, task, Budget("sparsity", 0.4), settings, workdir=tmp_path / "cut")
    undo()
    assert (tmp_path / "cut" / phase / "last").is_dir()
    torch.manual_seed(999)  # the resumed run must not depend on the RNG state it starts with
    resumed = compress(teacher, task, Budget("sparsity", 0.4), settings, workdir=tmp_path / "cut", resume=True)
    for name, t in whole.masks.items():
        assert torch.equal(t, getattr(resumed.masks, name)), name
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert whole.report["dev_metrics"] == resumed.report["dev_metrics"]


# ---------------------------------------------------------------- the CLI


def cofi_cmd(teacher_dir, glue_dir, out, *extra):
    return ["compress", "--method", "cofi", "--teacher", str(teacher_dir), "--task", "sst2", "--glue-dir",
            str(glue_dir), "--output", str(out), "--device", "cpu", "--threads", "1", "--batch-size", "16",
            "--prune-epochs", "2", "--finetune-epochs", "1", *extra]


@pytest.mark.slow
def test_cofi_verb_writes_a_finished_compact_model_that_eval_reads(tiny_model_dir, sst2_glue_dir, tmp_path, capsys):
    out = tmp_path / "cofi"
    assert main(cofi_cmd(tiny_model_dir, sst2_glue_dir, out, "--target-sparsity", "0.5", "--reg-lr", "0.1")) == 0
    printed = capsys.readouterr()
    assert "CoFi to sparsity 0.5" in printed.out
    assert "AT CHANCE" in printed.err            # the tiny teacher is not fine-tuned: said loudly
    r = json.loads((out / "report.json").read_text())
    assert r["method"] == "cofi" and r["command"].startswith("prunekit compress --method cofi")
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("tokenizer") and p.name not in (
        "vocab.txt", "special_tokens_map.json")) == [
        "config.json", "log_finetune.jsonl", "log_prune.jsonl", "masks.safetensors", "model.safetensors", "report.json"]
    assert main(["eval", "--model", str(out), "--glue-dir", str(sst2_glue_dir), "--device", "cpu"]) == 0
    acc = float(capsys.readouterr().out.split("accuracy ")[1].split(",")[0])
    assert acc == pytest.approx(r["dev_metrics"]["finetuned"]["accuracy"])


@pytest.mark.slow
def test_cofi_verb_resumes_an_interrupted_run_and_refuses_to_resume_nothing(tiny_model_dir, sst2_glue_dir, tmp_path,
                                                                            capsys, monkeypatch):
    out = tmp_path / "cofi"
    interrupt_at(monkeypatch, 7)
    cmd = cofi_cmd(tiny_model_dir, sst2_glue_dir, out, "--target-sparsity", "0.3", "--save-every", "4")
    assert main(cmd) == 130                            # interrupted
    assert not (out / "config.json").exists() and not (out / "report.json").exists()   # does not look finished
    assert main(["eval", "--model", str(out), "--glue-dir", str(sst2_glue_dir)]) == 2
    monkeypatch.undo()
    capsys.readouterr()
    assert main(cmd) == 2 and "--resume" in capsys.readouterr().err   # exists: resume or overwrite
    assert main(cmd + ["--resume"]) == 0
    assert (out / "report.json").is_file()
    assert main(cmd + ["--resume"]) == 2 and "finished" in capsys.readouterr().err
    assert main(cofi_cmd(tiny_model_dir, sst2_glue_dir, tmp_path / "nothing", "--target-sparsity", "0.3",
                         "--resume")) == 2
    assert "nothing to resume" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--target-sparsity", "1.5"], "argument --target-sparsity: 1.5 is out of range (must be finite, > 0 and < 1)"),
    (["--target-sparsity", "0"], "argument --target-sparsity: 0 is out of range"),
    (["--macs", "-0.2"], "argument --macs: -0.2 is out of range"),
    (["--target-sparsity", "0.5", "--macs", "0.5"], "give exactly one budget"),
    ([], "give exactly one budget"),
    (["--target-sparsity", "0.5", "--latency", "0.5"], "give exactly one budget"),
    (["--target-sparsity", "0.5", "--fisher-precision", "bf16"], "--fisher-precision is not an option of --method cofi"),
    (["--target-sparsity", "0.5", "--num-samples", "64"], "--num-samples is not an option of --method cofi"),
    (["--target-sparsity", "0.5", "--lr", "-1"], "argument --lr: -1 is out of range (must be finite, >= 1e-10 and <= 10)"),
    (["--target-sparsity", "0.5", "--prune-epochs", "nan"], "argument --prune-epochs: nan is out of range"),
    (["--target-sparsity", "0.5", "--reg-lr", "x"], "argument --reg-lr: 'x' is not a number"),
    (["--target-sparsity", "0.5", "--distill-layers", "2,x"], "argument --distill-layers: '2,x' is not layer numbers separated by commas"),
    (["--target-sparsity", "0.5", "--distill-layers", "7"], "distill layers must be between 0 and 2"),
    (["--target-sparsity", "0.5", "--resume", "--overwrite"], "contradict"),
])
def test_cofi_bad_input_is_one_line_exit_2_and_writes_nothing(tiny_model_dir, sst2_glue_dir, tmp_path, capsys,
                                                              extra, message):
    out = tmp_path / "out"
    assert main(cofi_cmd(tiny_model_dir, sst2_glue_dir, out, *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("prunekit compress: error:")
    assert not out.exists()


def test_post_training_refuses_cofi_options(tiny_model_dir, sst2_glue_dir, tmp_path, capsys):
    cmd = ["compress", "--teacher", str(tiny_model_dir), "--task", "sst2", "--glue-dir", str(sst2_glue_dir),
           "--macs", "0.5", "--output", str(tmp_path / "o"), "--target-sparsity", "0.5"]
    assert main(cmd) == 2
    assert "--target-sparsity is not an option of --method post-training" in capsys.readouterr().err


def test_cofi_refuses_a_teacher_whose_labels_do_not_fit_the_task(tok, sst2_glue_dir, tmp_path, capsys):
    from conftest import small_model
    three = tmp_path / "three-labels"
    small_model(tok, num_labels=3).save_pretrained(three)
    assert main(cofi_cmd(three, sst2_glue_dir, tmp_path / "out", "--target-sparsity", "0.5")) == 2
    assert "the model has 3 outputs but task sst2 has 2 labels" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_warm_start_from_post_training_masks(tmp_path):
    from prunekit.cofi.gates import LOG_ALPHA_RANGE
    from prunekit.cofi.pipeline import Schedule, warm_start
    teacher = tiny_model()
    task = synthetic_task(teacher)
    gates = Gates(teacher.config)
    warm_start(gates, teacher, task, Budget("macs", 0.5), CoFiConfig(progress=False))
    head = gates.log_alpha["z_head"]
    assert set(head.flatten().tolist()) == {torch.tensor(v).float().item() for v in LOG_ALPHA_RANGE}  # on or off
    det = gates.deterministic(ExpectedCost(teacher.config, "macs", [len(e["input_ids"]) for e in task.train]))
    from prunekit.posttrain import compress as posttrain
    pt = posttrain(teacher, task, Budget("macs", 0.5), evaluate=False, progress=False, batch_size=32,
                   num_samples=96)
    assert torch.equal(det.z_head != 0, pt.masks.z_head != 0)
    # a gate at the floor is still non-zero with probability 0.047, so the expected count of a layer's
    # units can round up by one: post-training's units all kept, at most one more per layer
    kept, want = det.z_int != 0, pt.masks.z_int != 0
    assert (kept | ~want).all() and ((kept & ~want).sum(1) <= 1).all()
    assert Schedule.of(CoFiConfig(init_from="posttrain", prune_epochs=4, batch_size=8), 96).warmup_steps == 0


def test_latency_target_uses_the_block_tables_and_measures_the_compact_model(tmp_path):
    """--latency: the expected block latency from the tables steers the gates; the report gives the
    compact model's latency by the tables and as measured in ONNX Runtime against the teacher's."""
    teacher = tiny_model(hidden_size=32, head_dim=8, num_heads=[4, 4], ffn_dim=[48, 48])
    task = synthetic_task(teacher)
    from prunekit.io import write_json
    from prunekit.latency import table_key
    # a fixed table in the cache, shaped like a measured one (a fixed cost plus a per-unit cost): the run must
    # not depend on how fast this machine happens to time a tiny block (CI saw tables that stalled the gates)
    H, F = 4, 48
    write_json(tmp_path / "lut.json", {table_key(teacher.config, 4, 16, "torch", "cpu"): {
        "mha": [0.05 + 0.02 * n for n in range(1, H + 1)], "ffn": [0.02 + 0.002 * n for n in range(1, F + 1)]}})
    lat = Deployment(latency_batch=4, latency_seq_len=16, lut_cache=str(tmp_path / "lut.json"), latency_runtime="torch")
    result = compress(teacher, task, Budget("latency", 0.6, lat), CoFiConfig(
        prune_epochs=12, finetune_epochs=0, reg_lr=0.1, **QUICK))
    r = result.report
    assert r["constraint"]["kind"] == "latency" and "block latency" in r["constraint"]["what"]
    assert abs(r["constraint"]["expected_at_end"] - 0.4) < 0.1                      # 1 - 0.6 of the latency removed
    assert set(r["latency"]["measured_ms"]) == {"teacher", "compact"} and r["latency"]["kept_measured"] > 0
    assert 0 < r["latency"]["kept_by_table"] <= 1
    assert r["latency"]["table_key"] is None                                        # the fixed table, not a timed one
    assert all(0 < ms < 1000 for ms in r["latency"]["measured_ms"].values())        # milliseconds of a tiny model
    from prunekit.summaries import summarise_cofi
    text = summarise_cofi(r, tmp_path / "run")
    assert "CoFi to block latency kept 0.6 ->" in text and "measured in ONNX Runtime" in text


def test_expected_latency_of_certain_gates_follows_the_fitted_tables():
    from prunekit.latency import fit_piecewise_linear
    cfg = tiny_model().config                                        # 3 layers, 4 heads, 12 FFN units
    table = {"mha": [1.0, 1.0, 1.5, 2.0], "ffn": [0.5] * 6 + [0.5 + 0.1 * i for i in range(1, 7)]}
    cost = ExpectedCost(cfg, "latency", table=table)
    fm, ff = fit_piecewise_linear(table["mha"]), fit_piecewise_linear(table["ffn"])
    assert cost.dense == pytest.approx(3 * (float(fm(4)) + float(ff(12))))
    probs = {"z_head": torch.tensor([[1.0, 1, 0, 0]] * 3), "z_int": torch.tensor([[1.0] * 8 + [0.0] * 4] * 3),
             "z_mha": torch.tensor([1.0, 0.0, 1.0]), "z_hidden": torch.ones(16)}
    want = 2 * float(fm(2)) + 3 * float(ff(8))                      # layer 1 has no attention
    assert float(cost.expected(probs)) == pytest.approx(want, rel=1e-6)
