"""Post-training pruning (prunekit.posttrain): search, latency fit, rearrangement, tuning, pipeline, CLI."""
import json

import pytest
import torch

import prunekit
from prunekit import Masks
from prunekit.cli import main
from prunekit.data import Task
from prunekit.errors import PrunekitError
from prunekit.posttrain.fisher import diagonal_fisher, mask_gradients
from prunekit.budget import Budget, Deployment
from prunekit.latency import LatencyFit, fit_piecewise_linear
from prunekit.posttrain import compress
from prunekit.posttrain.pipeline import PostTrainConfig
from prunekit.posttrain.stages import fisher_batches, sample_examples, tuning_subset
from prunekit.progress import Warnings
from prunekit.teachers import warn_if_not_fine_tuned
from prunekit.posttrain.rearrange import pruned_set_objective, rearrange, rearrange_layer
from prunekit.posttrain.search import search_latency, search_mac
from prunekit.posttrain.tune import tune_masks
# synthetic_task lives in conftest; test_posttrain_golden imports it from here
from conftest import labelled_batches, random_batch, synthetic_task, tiny_model


# ---------------------------------------------------------------- Fisher

def test_mask_gradients_match_finite_differences_and_leave_the_model_as_it_was():
    model = tiny_model().double()
    model.train()  # mask_gradients must switch to eval (no dropout) and back
    batches = labelled_batches()
    g_head, g_int = mask_gradients(model, batches, progress=False)
    assert g_head.shape == (3, 3, 4) and g_int.shape == (3, 3, 12)
    assert model.training and all(p.requires_grad for p in model.parameters())
    model.eval()
    eps = 1e-5
    for b, batch in enumerate(batches):
        for name, (l, u), g in (("z_head", (1, 2), g_head), ("z_int", (2, 7), g_int)):
            losses = []
            for sign in (1, -1):
                masks = Masks.ones(model.config, ("z_head", "z_int")).to(torch.float64)
                getattr(masks, name)[l, u] += sign * eps
                with torch.no_grad():
                    losses.append(model(**batch, masks=masks).loss.item())
            fd = (losses[0] - losses[1]) / (2 * eps)
            assert abs(fd - g[b, l, u].item()) <= 1e-4 * max(1.0, abs(fd))


def test_bf16_mask_gradients_rank_units_like_fp32():
    model = tiny_model()
    batches = labelled_batches(4)
    fp32 = [diagonal_fisher(g) for g in mask_gradients(model, batches, progress=False, precision="fp32")]
    bf16 = [diagonal_fisher(g) for g in mask_gradients(model, batches, progress=False, precision="bf16")]
    for a, b in zip(fp32, bf16):
        assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.98


# ---------------------------------------------------------------- MAC search

def brute_force_mac(hi, ni, hc, nc, budget, min_per_layer):
    """Best summed importance over every subset of units (2^(L*H + L*F) of them) within the budget,
    among those keeping at least min_per_layer heads and neurons in every layer."""
    L, H = hi.shape
    F = ni.shape[1]
    imp = torch.cat([hi.flatten(), ni.flatten()]).double()
    cost = torch.cat([torch.full((hi.numel(),), float(hc)), torch.full((ni.numel(),), float(nc))]).double()
    U = len(imp)
    bits = ((torch.arange(2 ** U)[:, None] >> torch.arange(U)) & 1).double()   # (2^U, U) every subset
    total_cost, total_imp = bits @ cost, bits @ imp
    heads = bits[:, :L * H].view(-1, L, H).sum(2)                              # (2^U, L) heads kept per layer
    neurons = bits[:, L * H:].view(-1, L, F).sum(2)
    ok = (total_cost <= budget + 1e-9) & (heads >= min_per_layer).all(1) & (neurons >= min_per_layer).all(1)
    return float(total_imp[ok].max())


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("frac", [0.15, 0.35, 0.5, 0.75])
@pytest.mark.parametrize("min_per_layer", [0, 1])
def test_mac_search_meets_budget_and_equals_brute_force(seed, frac, min_per_layer):
    g = torch.Generator().manual_seed(seed)
    L, H, F = 2, 3, 4
    hi, ni = torch.rand(L, H, generator=g, dtype=torch.float64) ** 2, torch.rand(L, F, generator=g, dtype=torch.float64) ** 2
    hc, nc = 7.0, 3.0
    budget = frac * (L * H * hc + L * F * nc)
    if budget < min_per_layer * L * (hc + nc):  # infeasible: one head and one neuron per layer cost 20
        with pytest.raises(PrunekitError, match="too small"):
            search_mac(hi, ni, hc, nc, budget, min_per_layer=min_per_layer)
        return
    res = search_mac(hi, ni, hc, nc, budget, min_per_layer=min_per_layer)
    cost = res.head_mask.sum() * hc + res.neuron_mask.sum() * nc
    assert cost <= budget + 1e-9 and abs(res.cost - float(cost)) < 1e-9
    assert set(res.head_mask.unique().tolist()) <= {0.0, 1.0}
    got = float((res.head_mask.double() * hi).sum() + (res.neuron_mask.double() * ni).sum())
    assert abs(got - res.score) < 1e-9
    assert abs(got - brute_force_mac(hi, ni, hc, nc, budget, min_per_layer)) < 1e-9
    if min_per_layer:
        assert (res.head_mask.sum(1) >= 1).all() and (res.neuron_mask.sum(1) >= 1).all()


def test_mac_search_with_a_budget_below_one_unit_is_a_clear_error():
    with pytest.raises(PrunekitError, match="too small"):
        search_mac(torch.rand(2, 3), torch.rand(2, 4), 7.0, 3.0, 2.9, min_per_layer=0)
    with pytest.raises(PrunekitError, match="too small to keep 1 head"):
        search_mac(torch.rand(2, 3), torch.rand(2, 4), 7.0, 3.0, 19.9)  # one of each per layer costs 20


def test_mac_search_with_the_whole_budget_keeps_everything():
    res = search_mac(torch.rand(2, 3), torch.rand(2, 4), 7.0, 3.0, 2 * 3 * 7.0 + 2 * 4 * 3.0)
    assert res.head_mask.all() and res.neuron_mask.all()


# ---------------------------------------------------------------- latency fit and search

@pytest.mark.parametrize("c,T,slope", [(2.0, 5, 0.3), (1.0, 1, 0.05), (4.0, 30, 0.0), (0.5, 17, 1.2)])
def test_latency_fit_recovers_a_known_piecewise_linear_function(c, T, slope):
    true = LatencyFit(c, T, slope)
    n = torch.arange(1, 41)
    lut = true(n)
    fit = fit_piecewise_linear(lut.tolist())
    if slope > 0:
        assert fit.T == T
    assert abs(fit.c - c) < 1e-9 and abs(fit.slope - slope) < 1e-9
    noisy = lut + 0.01 * torch.randn(len(n), generator=torch.Generator().manual_seed(0))
    fit = fit_piecewise_linear(noisy.tolist())
    assert (fit(n) - true(n)).abs().max() < 0.05


def test_latency_fit_is_never_empty_even_with_huge_errors():
    # the reference started its search from error 10,000 and could return no fit at all
    lut = (torch.rand(40, generator=torch.Generator().manual_seed(1)) * 1e4).tolist()
    fit = fit_piecewise_linear(lut)
    assert fit.T >= 1 and torch.isfinite(torch.tensor(fit.c))


def _latency_problem(seed, L=4, H=6, F=20):
    g = torch.Generator().manual_seed(seed)
    hi, ni = torch.rand(L, H, generator=g) ** 2, torch.rand(L, F, generator=g) ** 2
    mha, ffn = LatencyFit(3.0, 2, 0.5), LatencyFit(2.0, 5, 0.2)
    dense = float(L * (mha(H) + ffn(F)))
    return hi, ni, mha, ffn, dense


@pytest.mark.parametrize("seed", range(3))
def test_latency_search_meets_its_budget_and_keeps_base_units(seed):
    hi, ni, mha, ffn, dense = _latency_problem(seed)
    scores = []
    for frac in (0.2, 0.35, 0.5, 0.7, 0.9, 1.0):
        res = search_latency(hi, ni, mha, ffn, frac * dense, drop_layers=True)
        heads, neurons = res.head_mask.sum(1), res.neuron_mask.sum(1)
        est = float(mha(heads).sum() + ffn(neurons).sum())
        assert est <= frac * dense + 1e-9 and abs(est - res.cost) < 1e-9
        # a kept layer keeps at least its T most important units: they cost the flat part anyway
        for l in range(hi.shape[0]):
            if heads[l] > 0:
                assert heads[l] >= mha.T and res.head_mask[l, hi[l].argsort(descending=True)[:mha.T]].all()
            if neurons[l] > 0:
                assert neurons[l] >= ffn.T and res.neuron_mask[l, ni[l].argsort(descending=True)[:ffn.T]].all()
        scores.append(res.score)
    assert scores == sorted(scores)  # more budget never gives a worse choice
    assert res.head_mask.all() and res.neuron_mask.all()  # the full budget keeps the full model


def test_latency_search_drops_whole_layers_when_the_fixed_cost_dominates():
    hi, ni = torch.ones(3, 4), torch.ones(3, 8)
    hi[0] *= 0.01  # the least important attention sublayer
    mha, ffn = LatencyFit(10.0, 4, 0.0), LatencyFit(1.0, 1, 0.01)
    res = search_latency(hi, ni, mha, ffn, 2 * 10.0 + 3 * ffn(8).item(), drop_layers=True)
    assert res.head_mask.sum(1).tolist() == [0, 4, 4] and res.neuron_mask.all()


def test_latency_search_keeps_every_sublayer_unless_told_to_drop_layers():
    hi, ni, mha, ffn, dense = _latency_problem(0)
    for frac in (0.55, 0.7, 0.9):  # the base units of every layer cost half of the dense latency here
        res = search_latency(hi, ni, mha, ffn, frac * dense)
        assert (res.head_mask.sum(1) >= mha.T).all() and (res.neuron_mask.sum(1) >= ffn.T).all()
        assert res.cost <= frac * dense + 1e-9
    with pytest.raises(PrunekitError, match="too small"):
        search_latency(hi, ni, mha, ffn, 0.45 * dense)  # below the base units of every layer


# ---------------------------------------------------------------- rearrangement

@pytest.mark.parametrize("seed", range(5))
def test_rearrangement_never_increases_its_objective_and_keeps_counts(seed):
    g = torch.Generator().manual_seed(seed)
    B, L, U = 16, 3, 24
    base = torch.randn(B, 4, generator=g)
    grads = (base @ torch.randn(4, L * U, generator=g) + 0.3 * torch.randn(B, L * U, generator=g)).view(B, L, U)
    imp = diagonal_fisher(grads)
    mask = torch.zeros(L, U)
    for l, keep in enumerate((6, 12, 20)):
        mask[l, imp[l].argsort(descending=True)[:keep]] = 1.0
    new = rearrange(grads, mask, progress=False)
    assert torch.equal(new.sum(1), mask.sum(1))
    before, after = pruned_set_objective(grads, mask), pruned_set_objective(grads, new)
    assert (after <= before + 1e-9).all()
    assert (after < before - 1e-6).any()  # correlated gradients leave room for a better pruned set


def test_rearrangement_prunes_units_whose_gradients_cancel():
    # unit 1 (pruned by the search) and unit 4 (kept) cancel: pruning both costs almost nothing,
    # although unit 4 alone is more important than units 0 and 1
    g = torch.Generator().manual_seed(0)
    v = torch.nn.functional.normalize(torch.randn(8, generator=g), dim=0)
    G = torch.zeros(6, 8)                      # (U, B)
    G[0] = 0.1 * torch.randn(8, generator=g)
    G[1], G[4] = 1.0 * v, -1.05 * v
    G[2], G[3], G[5] = (torch.nn.functional.normalize(torch.randn(3, 8, generator=g), dim=1)
                        * torch.tensor([[1.3], [1.6], [3.0]]))
    keep = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    new = rearrange_layer(G, keep)
    assert new.tolist() == [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]


def test_rearrangement_objective_matches_a_direct_sum():
    grads = torch.randn(5, 2, 7)
    mask = (torch.rand(2, 7) > 0.5).float()
    want = torch.stack([(grads[:, l][:, mask[l] == 0].sum(1) ** 2).sum() for l in range(2)])
    assert torch.allclose(pruned_set_objective(grads, mask), want)


# ---------------------------------------------------------------- mask tuning

def pre_layernorm_outputs(model, batch, masks):
    """{(layer, 'attention'|'ffn'): the input of that sublayer's LayerNorm}, captured with hooks:
    an independent look at what tune_masks reconstructs."""
    store, hooks = {}, []
    for l, layer in enumerate(model.bert.layers):
        for kind, sub in (("attention", layer.attention), ("ffn", layer.ffn)):
            hooks.append(sub.residual.norm.register_forward_hook(
                lambda mod, inp, out, key=(l, kind): store.__setitem__(key, inp[0].detach())))
    with torch.no_grad():
        model(**batch, masks=masks)
    for h in hooks:
        h.remove()
    return store


def tuning_problem(seed=0):
    model = tiny_model(seed)
    batches = [random_batch(batch=8, seq=10, seed=s) for s in range(10)]
    g = torch.Generator().manual_seed(seed)
    t_head = (torch.rand(3, 4, generator=g) > 0.2).float()
    t_int = (torch.rand(3, 12, generator=g) > 0.2).float()
    s_head = t_head * (torch.rand(3, 4, generator=g) > 0.4).float()
    s_int = t_int * (torch.rand(3, 12, generator=g) > 0.4).float()
    t_head[:, 0] = t_int[:, 0] = s_head[:, 0] = s_int[:, 0] = 1.0  # every sublayer keeps a unit
    return model, batches, Masks(z_head=t_head, z_int=t_int), Masks(z_head=s_head, z_int=s_int)


@pytest.mark.slow  # 1 to 2 s per seed on an idle 2-core machine
@pytest.mark.parametrize("seed", range(3))
def test_tuning_reduces_reconstruction_error_on_the_data_it_fitted(seed):
    model, batches, teacher, student = tuning_problem(seed)
    tuned, fits = tune_masks(model, batches, teacher, student, ridge=1e-6, progress=False)
    assert [(f.layer, f.kind) for f in fits] == [(l, k) for l in range(3) for k in ("attention", "ffn")]
    assert sum(f.status == "ok" for f in fits) >= 5  # (a tiny [CLS]-only fit may exceed |scale| 10)
    assert torch.equal(tuned.z_head != 0, student.z_head != 0) and torch.equal(tuned.z_int != 0, student.z_int != 0)
    # recompute every sublayer's error independently: the student with scales fitted up to (excluding /
    # including) that sublayer, against the teacher's pre-LayerNorm output, over real tokens ([CLS] at the end)
    t_out = [pre_layernorm_outputs(model, b, teacher) for b in batches]
    for i, fit in enumerate(fits):
        def masks_up_to(j):
            head, inter = student.z_head.clone(), student.z_int.clone()
            for f in fits[:j]:
                (head if f.kind == "attention" else inter)[f.layer] = (
                    tuned.z_head if f.kind == "attention" else tuned.z_int)[f.layer]
            return Masks(z_head=head, z_int=inter)
        errors = []
        for masks in (masks_up_to(i), masks_up_to(i + 1)):
            err = 0.0
            for b, t in zip(batches, t_out):
                diff = pre_layernorm_outputs(model, b, masks)[(fit.layer, fit.kind)] - t[(fit.layer, fit.kind)]
                diff = diff[:, 0] if fit.layer == 2 else diff[b["attention_mask"].bool()]
                err += float((diff.double() ** 2).sum())
            errors.append(err)
        # tune_masks gets its errors from float32-accumulated normal equations: exact to ~1e-6 of the target's energy
        tol = 1e-5 * fit.target_energy
        assert errors[0] == pytest.approx(fit.error_before, rel=1e-4, abs=tol)
        assert errors[1] == pytest.approx(fit.error_after, rel=1e-4, abs=tol)
        assert errors[1] <= errors[0] * (1 + 1e-6) + 1e-8
    assert sum(f.error_after for f in fits) < 0.9 * sum(f.error_before for f in fits)


def test_tuning_keeps_scale_one_for_a_failing_layer_and_goes_on():
    model, batches, teacher, student = tuning_problem(0)
    tuned, fits = tune_masks(model, batches, teacher, student, ridge=1e-6, max_scale=1e-3, progress=False)
    # every solve now "fails" the |scale| check: each keeps its scales, none stops the loop
    assert len(fits) == 6 and all(f.status.startswith("kept scale 1") for f in fits)
    assert torch.equal(tuned.z_head, student.z_head) and torch.equal(tuned.z_int, student.z_int)


def test_tuning_with_one_kept_unit_solves_a_single_unknown():
    # the reference crashed on a one-unit layer (undefined variable in its single-unknown branch)
    model, batches, teacher, student = tuning_problem(0)
    student.z_head[1] = torch.tensor([0.0, 0.0, 1.0, 0.0])
    student.z_int[1] = 0.0
    student.z_int[1, 3] = 1.0
    _, fits = tune_masks(model, batches, teacher, student, progress=False)
    assert {(f.layer, f.kind, f.units, f.status) for f in fits if f.layer == 1} == {
        (1, "attention", 1, "ok"), (1, "ffn", 1, "ok")}


# ---------------------------------------------------------------- pipeline and CLI

def test_sample_is_drawn_without_replacement():
    train = [{"i": i} for i in range(100)]
    s = sample_examples(train, 60, seed=3)
    assert len({e["i"] for e in s}) == 60
    assert len(sample_examples(train, 500, seed=3)) == 100  # all of them when there are fewer


@pytest.mark.parametrize("by_length", [True, False])
def test_fisher_batches_are_full_and_cover_the_sample_once(by_length):
    model = tiny_model()
    sample = synthetic_task(model, n_train=70).train
    batches = fisher_batches(sample, 16, by_length, seed=0)
    assert len(batches) == 4 and all(b["input_ids"].shape[0] == 16 for b in batches)
    if by_length:  # little padding: each batch holds examples of similar length
        pad = sum(float((1 - b["attention_mask"]).sum()) for b in batches)
        assert pad <= 4 * 16 * 2


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["macs", "latency"])
def test_pipeline_compact_model_equals_the_masked_model(kind, tmp_path):
    model = tiny_model()
    task = synthetic_task(model)
    constraint = Budget(kind, 0.5, Deployment(latency_batch=2, latency_seq_len=8, lut_cache=str(tmp_path / "lut.json")))
    # tiny blocks are all overhead (a flat latency table), so the latency case may drop whole sublayers
    compact, tuned, report = compress(model, task, constraint, num_samples=64, batch_size=8, progress=False,
                                      max_fit_tokens=None, allow_empty_sublayers=kind == "latency",
                                      heldout=0)  # the tuned masks, unjudged
    batch = random_batch(batch=4, seq=11)
    with torch.no_grad():
        want = model(**batch, masks=tuned).logits
        got = compact(**batch).logits
    assert (got - want).abs().max() < 1e-5
    assert compact.config.num_heads == (tuned.z_head != 0).sum(1).tolist()
    assert compact.config.ffn_dim == (tuned.z_int != 0).sum(1).tolist()
    if kind == "macs":  # (the tiny latency case keeps whole layers whose [CLS]-only fits are refused)
        assert ((tuned.z_head != 0) & (tuned.z_head != 1)).any()  # tuning made real-valued scales
    assert report["constraint"]["cost_under_search_model"] <= report["constraint"]["budget"] * (1 + 1e-9)
    if kind == "macs":
        assert report["macs_kept"] <= 0.5 + 1e-9
        assert min(compact.config.num_heads) >= 1 and min(compact.config.ffn_dim) >= 1  # no sublayer emptied
    assert set(report["dev_metrics"]) == {"teacher", "search", "rearranged", "tuned", "compact"}
    assert report["dev_metrics"]["tuned"] == report["dev_metrics"]["compact"]
    assert {"fisher", "search", "rearrange", "tune", "choose", "pruning"} <= set(report["seconds"])
    assert report["stage_kept"] == "tuned" and report["heldout_examples"] == 0
    assert [r["heads"] for r in report["structure"]] == compact.config.num_heads


def test_tuning_subset_is_a_prefix_of_whole_examples_with_enough_tokens():
    sample = [{"input_ids": [1] * n} for n in (10, 30, 20, 40, 10, 50)]
    assert tuning_subset(sample, None) is sample
    assert tuning_subset(sample, 55, min_examples=1) == sample[:3]    # 10 + 30 + 20 >= 55
    assert tuning_subset(sample, 55, min_examples=4) == sample[:4]    # enough [CLS] tokens for the last layer
    assert tuning_subset(sample, 10_000, min_examples=1) == sample    # fewer tokens than asked: all of it


@pytest.mark.slow
def test_tuning_toward_the_dense_model_is_an_option_with_its_own_target():
    model = tiny_model()
    task = synthetic_task(model)
    run = lambda target: compress(model, task, Budget("macs", 0.5), num_samples=64, batch_size=8, progress=False,
                                  evaluate=False, max_fit_tokens=None, tune_teacher=target)
    _, assistant, rep_a = run("assistant")
    _, dense, rep_d = run("dense")
    assert (rep_a["tuning_teacher"], rep_d["tuning_teacher"]) == ("assistant", "dense")
    assert torch.equal(assistant.z_head != 0, dense.z_head != 0)  # same units kept: only the scales differ
    assert not torch.allclose(assistant.z_head, dense.z_head)
    fitted = [f for f in rep_d["tuning"] if f["status"] == "ok"]
    assert fitted and all(f["error_after"] <= f["error_before"] * (1 + 1e-9) for f in fitted)
    with pytest.raises(PrunekitError, match="tune_teacher takes assistant, dense"):
        run("teacher")


def test_warning_for_a_teacher_at_chance():
    task = Task(name="sst2", num_labels=2, is_regression=False, labels=["negative", "positive"],
                dev_sets={"dev": [{"input_ids": [1], "token_type_ids": [0], "label": int(i % 3 == 0)} for i in range(30)]})
    warnings = Warnings(echo=False)
    warn_if_not_fine_tuned(task, {"accuracy": 0.66}, warnings)  # the majority class (0) is 2/3
    assert len(warnings) == 1 and "fine-tuned" in warnings[0]
    warnings = Warnings(echo=False)
    warn_if_not_fine_tuned(task, {"accuracy": 0.9}, warnings)
    assert warnings == []


@pytest.mark.slow
def test_compress_verb_writes_a_compact_model_that_equals_the_masked_teacher(tiny_model_dir, sst2_glue_dir, tmp_path,
                                                                             capsys):
    out = tmp_path / "pt"
    code = main(["compress", "--method", "post-training", "--teacher", str(tiny_model_dir), "--task", "sst2",
                 "--glue-dir", str(sst2_glue_dir), "--macs", "0.5", "--output", str(out), "--num-samples", "64",
                 "--batch-size", "16", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "warning:" in captured.err and "fine-tuned" in captured.err  # an untrained teacher is at chance
    assert {"config.json", "model.safetensors", "masks.safetensors", "report.json"} <= {p.name for p in out.iterdir()}

    def no_nan(token):
        raise AssertionError(f"report.json has {token}: not strict JSON")
    report = json.loads((out / "report.json").read_text(), parse_constant=no_nan)
    # the summary prints the report's own figures
    assert captured.out.splitlines()[0] == (f"sst2: macs kept <= 0.5 -> MACs kept {report['macs_kept']:.3f}, "
                                            f"params kept {report['params_kept']:.3f}")
    assert report["constraint"] == {**report["constraint"], "kind": "macs", "value": 0.5}
    assert report["max_length"] == 64 and report["macs_kept"] <= 0.5 + 1e-9
    assert report["fisher_precision"] == "fp32"  # the default: bf16 flips near-ties in the ranking
    teacher = prunekit.load_model(str(tiny_model_dir))
    compact = prunekit.load_model(str(out))
    masks = Masks.load(out / "masks.safetensors", teacher.config)
    batch = {k: v for k, v in dict(teacher.tokenizer(["a good film", "the story was dull and sad"],
                                                     padding=True, return_tensors="pt")).items()}
    with torch.no_grad():
        assert (compact(**batch).logits - teacher(**batch, masks=masks).logits).abs().max() < 1e-5


@pytest.mark.parametrize("extra,message", [
    (["--macs", "1.5"], "argument --macs: 1.5 is out of range (must be finite, > 0 and < 1)"),
    (["--macs", "0"], "argument --macs: 0 is out of range"),
    (["--latency", "-0.2"], "argument --latency: -0.2 is out of range"),
    (["--macs", "0.5", "--num-samples", "8"], "fewer than one batch"),
    (["--macs", "0.5", "--latency", "0.5"], "exactly one budget"),
    ([], "exactly one budget"),
    (["--macs", "1e-9"], "too small to keep one head and one FFN neuron per layer"),
    (["--macs", "1e-9", "--allow-empty-sublayers"], "too small to keep a single head or FFN neuron"),
    (["--macs", "0.5", "--method", "cofi", "--num-samples", "64"], "--num-samples, --no-eval are not options of --method cofi"),
    (["--macs", "0.5", "--method", "magic"], "argument --method: invalid choice: 'magic'"),
    (["--macs", "0.5", "--fisher-precision", "fp8"], "--fisher-precision"),
    (["--macs", "0.2", "--gradual", "0.5", "--distill-steps", "0", "--num-samples", "32"], "--gradual goes with --distill-steps"),
    (["--macs", "0.2", "--gradual", "0.3,0.5", "--distill-steps", "2"], "--gradual takes decreasing budgets"),
    (["--macs", "0.2", "--gradual", "0.5,1.5", "--distill-steps", "2"], "argument --gradual: '0.5,1.5' is not fractions"),
    (["--macs", "0.2", "--gradual", "half", "--distill-steps", "2"], "argument --gradual: 'half' is not fractions"),
    (["--macs", "0.5", "--gradual", "0.4", "--distill-steps", "2", "--num-samples", "32"],
     "--gradual budgets must all be above the final --macs 0.5"),
    (["--macs", "0.2", "--gradual", "0.5", "--distill-steps", "2", "--allow-empty-sublayers"], "--gradual keeps every sublayer"),
    (["--macs", "0.5", "--distill-lr", "1e-4"], "--distill-lr goes with --distill-steps"),
    (["--macs", "0.5", "--gradual-steps", "10", "--distill-steps", "2"], "--gradual-steps goes with --gradual"),
    (["--macs", "0.5", "--distill-lr", "0", "--distill-steps", "2"], "argument --distill-lr: 0 is out of range"),
    (["--macs", "0.5", "--heldout", "-1"], "argument --heldout: -1 is out of range"),
])
def test_compress_bad_input_is_one_line_exit_2(tiny_model_dir, sst2_glue_dir, tmp_path, capsys, extra, message):
    cmd = ["compress", "--teacher", str(tiny_model_dir), "--task", "sst2", "--glue-dir", str(sst2_glue_dir),
           "--output", str(tmp_path / "x"), "--batch-size", "16", "--device", "cpu", "--no-eval"] + extra
    assert main(cmd) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "x").exists()


def test_compress_refuses_a_missing_teacher_and_an_existing_output(tiny_model_dir, sst2_glue_dir, tmp_path, capsys):
    base = ["compress", "--task", "sst2", "--glue-dir", str(sst2_glue_dir), "--macs", "0.5", "--device", "cpu"]
    assert main(base + ["--teacher", str(tmp_path / "nope"), "--output", str(tmp_path / "o")]) == 2
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "report.json").write_text("{}")   # an earlier run's (an empty directory may be written into)
    assert main(base + ["--teacher", str(tiny_model_dir), "--output", str(tmp_path / "o")]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.slow  # times every block size of the tiny model twice (about 5 s)
def test_latency_tables_are_cached_per_shape_and_reused(tmp_path):
    from prunekit.latency import load_or_measure
    cfg = tiny_model().config
    cache = tmp_path / "lut.json"
    first, cached = load_or_measure(cfg, 2, 8, cache, runtime="torch", progress=False)
    assert not cached and len(first["mha"]) == 4 and len(first["ffn"]) == 12
    again, cached = load_or_measure(cfg, 2, 8, cache, runtime="torch", progress=False)
    assert cached and again == first
    other, cached = load_or_measure(cfg, 3, 8, cache, runtime="torch", progress=False)  # another shape: measured
    assert not cached and len(json.loads(cache.read_text())) == 2


@pytest.mark.slow
def test_latency_tables_from_onnx_runtime(tmp_path):
    from prunekit.latency import load_or_measure
    table, _ = load_or_measure(tiny_model().config, 2, 8, tmp_path / "lut.json", runtime="ort", progress=False)
    assert table["runtime"] == "ort" and table["key"].startswith("ort|")
    assert all(t > 0 for t in table["mha"] + table["ffn"])


def test_a_cache_file_that_is_not_a_latency_table_is_refused_not_overwritten(tmp_path):
    from prunekit.latency import load_or_measure
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x00\x01 not json")
    with pytest.raises(PrunekitError, match="not a readable JSON"):
        load_or_measure(tiny_model().config, 2, 8, bad, runtime="torch", progress=False)
    assert bad.read_bytes() == b"\x00\x01 not json"


@pytest.mark.slow
def test_compress_verb_latency_mode_measures_then_reuses_its_tables(tiny_model_dir, sst2_glue_dir, tmp_path,
                                                                     capsys):
    cmd = ["compress", "--teacher", str(tiny_model_dir), "--task", "sst2", "--glue-dir", str(sst2_glue_dir),
           "--latency", "0.6", "--latency-batch", "2", "--latency-seq-len", "8", "--lut-cache", str(tmp_path / "lut.json"),
           "--num-samples", "32", "--batch-size", "16", "--device", "cpu", "--no-eval",
           "--allow-empty-sublayers"]  # tiny blocks are all overhead: a flat table leaves nothing to trim but layers
    assert main(cmd + ["--output", str(tmp_path / "a")]) == 0
    first = json.loads((tmp_path / "a" / "report.json").read_text())
    assert main(cmd + ["--output", str(tmp_path / "b")]) == 0
    second = json.loads((tmp_path / "b" / "report.json").read_text())
    assert not first["constraint"]["latency_table_cached"] and second["constraint"]["latency_table_cached"]
    assert first["constraint"]["latency_table"].startswith("ort|")
    assert second["constraint"]["cost_under_search_model"] <= second["constraint"]["budget"] * (1 + 1e-9)
    out = capsys.readouterr().out
    for r in (first, second):
        assert (f"sst2: latency kept <= 0.6 -> MACs kept {r['macs_kept']:.3f}, params kept {r['params_kept']:.3f}, "
                f"block latency kept {r['latency_kept_table']:.3f} (table)") in out.splitlines()


def test_an_hf_encoder_without_a_classifier_is_flagged_as_not_fine_tuned(tok, sst2_glue_dir, tmp_path, capsys):
    from transformers import BertConfig, BertModel
    hf_dir = tmp_path / "hf-encoder"
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=12, max_position_embeddings=64)).save_pretrained(hf_dir)
    tok.save_pretrained(hf_dir)
    code = main(["compress", "--teacher", str(hf_dir), "--task", "sst2", "--glue-dir", str(sst2_glue_dir),
                 "--macs", "0.6", "--output", str(tmp_path / "out"), "--num-samples", "32", "--batch-size", "16",
                 "--device", "cpu", "--no-eval"])
    err = capsys.readouterr().err
    assert code == 0 and "no classifier weights" in err and "not fine-tuned" in err


def test_distill_steps_fine_tune_the_compact_model_from_the_teacher():
    torch.set_num_threads(1)
    model = tiny_model()
    task = synthetic_task(model)
    plain = compress(model, task, Budget("macs", 0.5), num_samples=64, batch_size=8, progress=False)
    distilled = compress(model, task, Budget("macs", 0.5), num_samples=64, batch_size=8, progress=False,
                         distill_steps=6, distill_lr=1e-3)
    assert torch.equal(plain.masks.z_head, distilled.masks.z_head)             # the same pruning ...
    assert distilled.model.config.num_heads == plain.model.config.num_heads
    a, b = plain.model.state_dict(), distilled.model.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)                          # ... then trained further
    r = distilled.report
    assert "distilled" in r["dev_metrics"] and r["distill_steps"] == 6 and r["seconds"]["distill"] > 0
    # pruning time is Fisher + search + rearrangement + tuning + the stage choice: the distillation is apart
    assert r["seconds"]["pruning"] == pytest.approx(sum(r["seconds"][s] for s in ("fisher", "search", "rearrange",
                                                                                  "tune", "choose")), abs=0.01)


def test_distill_precision_bf16_trains_under_autocast_and_is_recorded():
    torch.set_num_threads(1)
    model = tiny_model()
    task = synthetic_task(model)
    plain = compress(model, task, Budget("macs", 0.5), num_samples=64, batch_size=8, progress=False)
    runs = {p: compress(model, task, Budget("macs", 0.5), num_samples=64, batch_size=8, progress=False,
                        distill_steps=4, distill_lr=1e-3, distill_precision=p) for p in ("fp32", "bf16")}
    assert runs["bf16"].report["distill_precision"] == "bf16"
    p0, a, b = plain.model.state_dict(), runs["fp32"].model.state_dict(), runs["bf16"].model.state_dict()
    assert all(b[k].dtype == torch.float32 for k in b)                         # fp32 master weights
    def mean_abs(x, y):
        return sum((x[k] - y[k]).abs().sum().item() for k in x) / sum(x[k].numel() for k in x)
    assert mean_abs(a, b) > 0                                                    # autocast did change the maths
    assert mean_abs(a, b) < 0.1 * mean_abs(a, p0)                                # ... but it trained the same way
    with pytest.raises(PrunekitError, match="--distill-precision takes fp32, bf16"):
        compress(model, task, Budget("macs", 0.5), num_samples=64, batch_size=8, progress=False,
                 distill_steps=4, distill_precision="fp16")


def test_the_kept_stage_is_the_best_on_held_out_examples_and_ties_go_to_the_later_stage():
    from prunekit.posttrain.stages import choose_stage, heldout_examples
    model = tiny_model().eval()
    task = synthetic_task(model, n_train=96)
    sample = task.train[:40]
    held = heldout_examples(task.train, sample, 30, seed=0)
    assert len(held) == 30 and not {id(e) for e in held} & {id(e) for e in sample}       # outside the sample
    assert heldout_examples(task.train, sample, 1000, seed=0).__len__() == 56            # all there is
    L, H, F = model.config.num_layers, model.config.num_heads[0], model.config.ffn_dim[0]
    ones = Masks(z_head=torch.ones(L, H), z_int=torch.ones(L, F))
    kill = Masks(z_head=torch.ones(L, H), z_int=torch.zeros(L, F).index_fill_(1, torch.tensor([0]), 1.0) * 1e3)
    config = PostTrainConfig(progress=False)
    choice = choose_stage(model, {"search": ones, "rearranged": kill, "tuned": kill}, held, task.name, config)
    metric = {k: v["accuracy"] for k, v in choice.heldout.items()}
    assert choice.examples == 30 and metric[choice.stage] == max(metric.values())
    same = choose_stage(model, {"search": ones, "rearranged": ones, "tuned": ones}, held, task.name, config)
    assert same.stage == "tuned"                                                         # a tie: the later stage
    assert choose_stage(model, {"search": ones, "tuned": kill}, [], task.name, config).stage == "tuned"


@pytest.mark.slow
def test_compress_keeps_the_masks_of_the_stage_it_reports():
    torch.set_num_threads(1)
    model = tiny_model()
    task = synthetic_task(model, n_train=160)
    compact, masks, report = compress(model, task, Budget("macs", 0.4), num_samples=64, batch_size=8,
                                      progress=False, heldout=96)
    assert report["heldout_examples"] == 96 and set(report["heldout_metrics"]) == {"search", "rearranged", "tuned"}
    best = max(v["accuracy"] for v in report["heldout_metrics"].values())
    assert report["heldout_metrics"][report["stage_kept"]]["accuracy"] == best
    batch = random_batch(batch=4, seq=11)
    with torch.no_grad():
        assert (compact(**batch).logits - model(**batch, masks=masks).logits).abs().max() < 1e-5


@pytest.mark.slow
def test_a_tiny_gradual_run_prunes_the_distilled_model_again_in_the_teacher_positions():
    torch.set_num_threads(1)
    model = tiny_model()
    task = synthetic_task(model)
    one = compress(model, task, Budget("macs", 0.5), num_samples=64, batch_size=8, progress=False, heldout=0)
    run = compress(model, task, Budget("macs", 0.3), num_samples=64, batch_size=8, progress=False, heldout=0,
                   gradual=(0.5,), distill_steps=3, distill_lr=1e-3)
    (first,) = run.report["gradual"]
    assert first["value"] == 0.5 and first["num_heads"] == one.model.config.num_heads    # round 1 = one shot at 0.5
    assert first["distill_steps"] == 1                                                  # a quarter of 3, at least 1
    assert run.report["macs_kept"] <= 0.3 + 1e-9 and "distilled" in run.report["dev_metrics"]
    kept_before = one.masks.z_head != 0                                                 # (the same Fisher sample)
    assert not ((run.masks.z_head != 0) & ~kept_before).any()                          # only units kept before
    assert not ((run.masks.z_int != 0) & ~(one.masks.z_int != 0)).any()
    assert run.report["seconds"]["gradual"] > 0
