"""The bench scripts run end to end on a tiny teacher: each one's measuring path (not only --replot)
on the package as it is, in a folder laid out as the repository root (runs/teacher-sst2, made by
`prunekit finetune`'s code, and a small SST-2), and the table it writes comes back byte for byte
from its JSON. The scripts that load the real MiniLM, export ONNX graphs or spawn `prunekit` are slow."""
import json
import shutil
from pathlib import Path

import pytest

from conftest import tiny_model, write_sentiment_glue
from prunekit.budget import Budget
from prunekit.cofi import CoFiConfig
from prunekit.harness import run
from prunekit.methods import METHODS
from prunekit.posttrain import PostTrainConfig
from prunekit.training import TrainArgs, finetune
from test_bench_scripts import RESULTS, script  # noqa: F401 (the fixture that imports a bench script)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tok):
    """A repository root of a tiny world: glue/SST-2 (96 train, 40 dev) and runs/teacher-sst2, a tiny
    model with MiniLM's vocabulary fine-tuned one epoch by prunekit's finetune (as bench/teachers.py
    makes the teachers, with one evaluation at the end)."""
    root = tmp_path_factory.mktemp("bench-root")
    (root / "glue").mkdir()
    write_sentiment_glue(root / "glue", 96, 40, max_filler=9)
    model = tiny_model(0, vocab_size=tok.vocab_size, max_position_embeddings=128, num_labels=2)
    model.tokenizer = tok
    model.save_pretrained(root / "tiny")
    finetune(str(root / "tiny"), "sst2", TrainArgs(output=str(root / "runs" / "teacher-sst2"), epochs=1, lr=1e-3,
                                                   eval_every=10**6, progress=False), glue_dir=str(root / "glue"))
    return root


@pytest.fixture
def at(workspace, monkeypatch):
    """The scripts read runs/ and write bench/results/ relative to where they run: here, the workspace."""
    monkeypatch.chdir(workspace)
    return workspace


def replots_the_same(module, out: Path):
    """What a measuring run wrote as OUT.md is what --replot writes again from its OUT.json."""
    md = out.with_name(out.name + ".md").read_bytes()
    out.with_name(out.name + ".md").unlink()
    assert module.main(["--replot", str(out.with_name(out.name + ".json"))]) == 0
    assert out.with_name(out.name + ".md").read_bytes() == md


def numbered_rows(md: str) -> list[str]:
    """The rows of a Markdown table whose first cell is a number."""
    return [line for line in md.splitlines() if line.startswith("| ") and line[2].isdigit()]


@pytest.fixture(scope="module")
def cofi_runs(workspace):
    """What `bench/cofi.py --runs` leaves for SST-2 at sparsity 0.6 (the CoFi run, post-training at its
    MACs) and the warm-started CoFi run bench/studies/cofi_variants.py compares with, made through the
    harness as `prunekit compress` makes them, on short schedules."""
    runs, data = workspace / "runs", {"glue_dir": str(workspace / "glue")}
    teacher = str(runs / "teacher-sst2")
    for name, extra in (("cofi-sst2-0.6", {}), ("cofi-sst2-0.6-warm", {"init_from": "posttrain"})):
        run(METHODS["cofi"], teacher, "sst2", runs / name, Budget("sparsity", 0.6), CoFiConfig(
            prune_epochs=2, finetune_epochs=1, reg_lr=0.5, eval_every=3, progress=False, **extra), data=data)
    kept = json.loads((runs / "cofi-sst2-0.6" / "report.json").read_text())["macs_kept"]
    run(METHODS["post-training"], teacher, "sst2", runs / "pt-sst2-cofi0.6", Budget("macs", round(kept, 4)),
        PostTrainConfig(progress=False), data={**data, "max_length": 128})
    return runs


def test_distill_prunes_once_distils_each_n_and_a_rerun_skips_what_is_done(script, at):
    distill = script("distill")
    out = at / "res" / "distill"
    argv = ["--tasks", "sst2", "--macs", "0.5", "--steps", "2", "--threads", "1", "--precision", "fp32",
            "--glue-dir", str(at / "glue"), "--out", str(out)]
    assert distill.main(argv) == 0
    rows = json.loads((at / "res" / "distill.json").read_text())["rows"]
    assert [(r["task"], r["macs"], r["steps"]) for r in rows] == [("sst2", 0.5, 0), ("sst2", 0.5, 2)]
    for r in rows:
        assert 0 <= r["metric"] <= 1 and r["drop"] == round(100 * (r["teacher"] - r["metric"]), 2)
        assert r["wall_s"] == pytest.approx(r["prune_s"] + r["distill_s"], abs=0.11)
    assert rows[0]["distill_s"] == 0.0 and rows[1]["distill_s"] > 0  # N = 0 is the pruned model as it is
    assert distill.main(argv) == 0                                     # nothing left to do: rows kept as they are
    assert json.loads((at / "res" / "distill.json").read_text())["rows"] == rows
    replots_the_same(distill, out)


def test_posttrain_runs_the_method_through_the_harness_and_times_it(script, at):
    posttrain = script("posttrain")
    out = at / "res" / "posttrain"
    assert posttrain.main(["--tasks", "sst2", "--macs", "0.5", "--no-latency", "--no-speed", "--timing", "1",
                           "--threads", "1", "--timing-threads", "1", "--glue-dir", str(at / "glue"),
                           "--out", str(out)]) == 0
    doc = json.loads((at / "res" / "posttrain.json").read_text())
    [r] = doc["results"]
    assert r["output"] == "runs/pt-sst2-0.5" and (at / "runs" / "pt-sst2-0.5" / "model.safetensors").is_file()
    assert r["constraint"]["kind"] == "macs" and r["macs_kept"] <= 0.5 and r["max_length"] == 64  # Kwon et al.'s
    assert set(r["dev_metrics"]) == {"teacher", "search", "rearranged", "tuned", "compact"}
    assert [(t["fisher_precision"], t["num_samples"]) for t in doc["timing"]] == [("fp32", 96), ("bf16", 96)]
    assert all(t["seconds"]["pruning"] > 0 for t in doc["timing"])
    replots_the_same(posttrain, out)


def test_cofi_reports_the_runs_beside_post_training_and_times_a_pruning_step(script, at, cofi_runs):
    cofi = script("cofi")
    out = at / "res" / "cofi"
    assert cofi.main(["--step-cost", "--steps", "2", "--tasks", "sst2", "--sparsities", "0.6", "--threads", "1",
                      "--glue-dir", str(at / "glue"), "--out", str(out)]) == 0
    doc = json.loads((at / "res" / "cofi.json").read_text())
    [(key, result)] = doc["results"].items()
    assert key == "sst2-0.6" and result["cofi"]["method"] == "cofi"
    assert result["post_training"]["constraint"]["value"] == round(result["cofi"]["macs_kept"], 4)
    step = doc["state"]["step_cost"]
    assert step["steps"] == 2 and step["ratio"] == step["seconds_per_step_median"]["cofi"] / \
        step["seconds_per_step_median"]["finetune"] > 0
    assert "Step cost (sst2 batches of 32" in (at / "res" / "cofi.md").read_text()
    replots_the_same(cofi, out)


def test_cofi_variants_compares_the_warm_start_with_the_cold_one(script, at, cofi_runs):
    (at / "bench" / "results").mkdir(parents=True, exist_ok=True)
    shutil.copy(RESULTS / "cofi_variants_latency.json", at / "bench" / "results")  # names the same runs
    assert script("studies/cofi_variants").main([]) == 0
    md = (at / "bench" / "results" / "cofi_variants.md").read_text()
    warm = json.loads((cofi_runs / "cofi-sst2-0.6-warm" / "report.json").read_text())
    assert f"| cofi-sst2-0.6-warm | sparsity 0.6 | {warm['sparsity']:.3f} |" in md
    cold_steps = [json.loads(line)["step"] for line in (cofi_runs / "cofi-sst2-0.6" / "log_prune.jsonl").open()]
    assert [row.split(" | ")[0] for row in numbered_rows(md)] == [f"| {s}" for s in cold_steps]  # one per evaluation


def test_fisher_precision_pairs_the_precisions_by_seed_and_logs_each_run(script, at):
    study = script("studies/fisher_precision")
    out = at / "res" / "fisher_precision"
    argv = ["--tasks", "sst2", "--seeds", "0", "1", "--glue-dir", str(at / "glue"), "--out", str(out)]
    assert study.main(argv) == 0
    doc = json.loads((at / "res" / "fisher_precision.json").read_text())
    assert sorted((r["seed"], r["precision"]) for r in doc["runs"]) == [(0, "bf16"), (0, "fp32"), (1, "bf16"),
                                                                        (1, "fp32")]
    assert all(len(r["masks_differ_from_fp32"]) == 2 for r in doc["runs"] if r["precision"] == "bf16")
    assert doc["summary"]["sst2"]["n"] == 2
    assert len((at / "runs" / "fisher_precision.jsonl").read_text().splitlines()) == 4
    assert study.main(argv) == 0                                      # resumed: every run was logged already
    assert len((at / "runs" / "fisher_precision.jsonl").read_text().splitlines()) == 4
    replots_the_same(study, out)


def test_teachers_tables_the_finished_teacher_runs(script, at):
    (at / "runs" / "teacher-sst2.wall").write_text(json.dumps({  # what --train writes beside each run
        "command": "prunekit finetune --task sst2", "wall_seconds": 12.0, "machine": "test"}))
    teachers = script("teachers")
    out = at / "res" / "teachers"
    assert teachers.main(["--out", str(out), "--speed", str(RESULTS / "train_speed.json")]) == 0
    doc = json.loads((at / "res" / "teachers.json").read_text())
    [t] = doc["teachers"]
    metrics = json.loads((at / "runs" / "teacher-sst2" / "metrics.json").read_text())
    assert t["run"] == "runs/teacher-sst2" and t["train_examples"] == 96 and t["final"] == metrics["final"]
    assert t["settings"]["epochs"] == 1 and doc["train_speed"]
    replots_the_same(teachers, out)


def test_malloc_ab_sets_each_allocator_against_the_other(script, tmp_path):
    committed = json.loads((RESULTS / "train_speed_paths.json").read_text())
    for name, malloc, factor in (("a", "glibc's default", 1.0), ("b", "keep freed memory", 0.5)):
        rows = [{**r, "median_s": r["median_s"] * factor} for r in committed["rows"]]
        (tmp_path / f"{name}.json").write_text(json.dumps({**committed, "malloc": malloc, "rows": rows}))
    study = script("studies/malloc_ab")
    out = tmp_path / "ab"
    assert study.main([str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(out)]) == 0
    body = numbered_rows((tmp_path / "ab.md").read_text())
    assert len(body) == len(committed["rows"]) and all(" | 2.00× | " in line for line in body)
    replots_the_same(study, out)


@pytest.mark.slow  # spawns `prunekit compress` twice (CoFi, then post-training at the MACs CoFi kept)
def test_cofi_runs_launch_the_cli_and_keep_what_they_made(script, at, tmp_path, monkeypatch):
    root = tmp_path / "root"
    shutil.copytree(at / "runs" / "teacher-sst2", root / "runs" / "teacher-sst2")
    monkeypatch.chdir(root)
    cofi = script("cofi")
    monkeypatch.setitem(cofi.SCHEDULE, "sst2", ["--prune-epochs", "2", "--finetune-epochs", "1", "--reg-lr", "0.5",
                                                "--eval-every", "3"])
    assert cofi.main(["--runs", "--tasks", "sst2", "--sparsities", "0.6", "--threads", "1", "--glue-dir",
                      str(at / "glue"), "--out", str(root / "res" / "cofi")]) == 0
    report = json.loads((root / "runs" / "cofi-sst2-0.6" / "report.json").read_text())
    assert report["command"].startswith("prunekit compress --method cofi") and report["bench"]["wall_seconds"] > 0
    pt = json.loads((root / "runs" / "pt-sst2-cofi0.6" / "report.json").read_text())
    assert pt["constraint"] == {**pt["constraint"], "kind": "macs", "value": round(report["macs_kept"], 4)}
    assert (root / "runs" / "cofi-sst2-0.6.log").is_file() and (root / "res" / "cofi.md").is_file()


@pytest.mark.slow  # measures ORT latency tables, exports and times ONNX graphs
def test_posttrain_latency_budget_and_speed(script, at):
    posttrain = script("posttrain")
    out = at / "res" / "posttrain-latency"
    assert posttrain.main(["--tasks", "sst2", "--macs", "0.6", "--latency", "0.5", "--threads", "1",
                           "--speed-threads", "1", "--glue-dir", str(at / "glue"), "--out", str(out)]) == 0
    doc = json.loads(out.with_name("posttrain-latency.json").read_text())
    lat = next(r for r in doc["results"] if r["constraint"]["kind"] == "latency")
    assert lat["output"] == "runs/pt-sst2-lat0.5" and 0 < lat["latency_kept_table"] < 1
    assert lat["constraint"]["cost_under_search_model"] <= lat["constraint"]["budget"]  # the fitted tables' promise
    assert (at / "runs" / "latency_lut.json").is_file()
    assert [r["model"] for r in doc["latency"]] == ["teacher-sst2", "pt-sst2-0.6", "pt-sst2-lat0.5"]
    assert doc["latency"][0]["speedup"] == 1.0 and all(r["p50_ms"] > 0 for r in doc["latency"])
    replots_the_same(posttrain, out)


@pytest.mark.slow  # fine-tunes the real MiniLM in a `prunekit finetune` process
def test_teachers_train_fine_tunes_minilm_through_the_cli(script, at, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    teachers = script("teachers")
    assert teachers.main(["--train", "--tasks", "sst2", "--glue-dir", str(at / "glue"), "--out",
                          str(tmp_path / "teachers"), "--speed", str(tmp_path / "none.json")]) == 0
    wall = json.loads((tmp_path / "runs" / "teacher-sst2.wall").read_text())
    assert wall["command"].startswith("prunekit finetune --model minilm --task sst2") and wall["wall_seconds"] > 0
    [t] = json.loads((tmp_path / "teachers.json").read_text())["teachers"]
    assert t["steps"] == 3 and t["best"] == t["final"]               # one epoch of 96 examples, one evaluation


@pytest.mark.slow  # loads the real MiniLM (eight copies of it)
def test_train_speed_times_a_fine_tuning_and_a_cofi_step_per_path(script, tmp_path):
    train_speed = script("train_speed")
    out = tmp_path / "paths"
    assert train_speed.main(["--rounds", "1", "--seq", "8", "--batch-size", "2", "--path", "torch:bf16",
                             "--out", str(out)]) == 0
    rows = json.loads((tmp_path / "paths.json").read_text())["rows"]
    assert sorted((r["step"], r["kernels"], r["precision"]) for r in rows) == [
        ("cofi", "torch", "bf16"), ("cofi", "torch", "fp32"), ("finetune", "torch", "bf16"),
        ("finetune", "torch", "fp32")]
    assert all(r["median_s"] > 0 for r in rows)
    assert [r["speedup_vs_eager_fp32"] for r in rows if r["precision"] == "fp32"] == [1.0, 1.0]
    replots_the_same(train_speed, out)


@pytest.mark.slow  # two bench/train_speed.py processes, each loading the real MiniLM
def test_cpu_isa_times_each_way_in_its_own_process_and_replots(script, tmp_path):
    cpu_isa = script("cpu_isa")
    out = tmp_path / "isa"
    assert cpu_isa.main(["--steps", "--rounds", "1", "--inner-rounds", "1", "--seq", "8", "--paths", "torch:fp32",
                         "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    doc = json.loads((tmp_path / "isa.json").read_text())
    assert [(r["way"], r["round"]) for r in doc["runs"]] == [("native", 0), ("avx2 (emulated)", 0)]
    assert sorted((c["step"], c["way"]) for c in doc["median_s"]) == [
        (step, way) for step in ("cofi", "finetune") for way in ("avx2 (emulated)", "native")]
    assert all(c["median_s"] > 0 and c["seq"] == 8 for c in doc["median_s"])
    assert "$ " in (tmp_path / "work" / "cpu_isa.log").read_text()            # each child's command, logged
    emulated = json.loads((tmp_path / "work" / "cpu_isa_steps_0_avx2.json").read_text())
    assert emulated["machine"].endswith("native bf16: False")                  # the child saw the AVX2 CPU
    replots_the_same(cpu_isa, out)


@pytest.mark.slow  # loads the real MiniLM and trains it a few steps
def test_length_grouping_appends_one_measurement_per_run(script, at, tmp_path):
    study = script("studies/length_grouping")
    out = tmp_path / "train_speed.json"
    for _ in range(2):
        assert study.main(["--steps", "2", "--batch-size", "4", "--glue-dir", str(at / "glue"), "--out", str(out)]) == 0
    runs = json.loads(out.read_text())
    assert len(runs) == 2 and [r["group_by_length"] for r in runs[0]["rows"]] == [False, True]
    assert all(r["steps_per_epoch"] == 24 and r["seconds_per_step"] > 0 for r in runs[1]["rows"])


@pytest.mark.slow  # spawns `prunekit compress` once per precision
def test_pruning_time_times_the_cli_per_fisher_precision(script, at):
    study = script("studies/pruning_time")
    out = at / "res" / "pruning_time"
    assert study.main(["--teacher", "sst2=runs/teacher-sst2", "--repeats", "1", "--threads", "1", "--glue-dir",
                       str(at / "glue"), "--out", str(out)]) == 0
    rows = json.loads(out.with_name("pruning_time.json").read_text())["rows"]
    assert [r["fisher_precision"] for r in rows] == ["fp32", "bf16"]
    assert all(r["wall_s"] > r["pruning_s"] > 0 for r in rows)
    replots_the_same(study, out)


@pytest.mark.slow  # exports four ONNX variants and scores them in ONNX Runtime
def test_export_int8_quality_scores_each_variant_against_pytorch(script, at):
    study = script("studies/export_int8_quality")
    out = at / "res" / "export_int8"
    assert study.main(["--model", "runs/teacher-sst2", "--task", "sst2", "--glue-dir", str(at / "glue"), "--cache",
                       str(at / "cache"), "--out", str(out)]) == 0
    [result] = json.loads(out.with_name("export_int8.json").read_text())["results"]
    variants = {r["variant"]: r for r in result["rows"]}
    assert list(variants) == ["PyTorch fp32", "ORT fp32", "ORT fp32 optimised", "ORT int8", "ORT int8 optimised"]
    assert result["examples"] == 40 and variants["ORT fp32"]["max_abs_diff"] < 1e-4
    assert variants["ORT fp32"]["accuracy"] == variants["PyTorch fp32"]["accuracy"]
    replots_the_same(study, out)


@pytest.mark.slow  # spawns `prunekit compress` twice, exports and times eight ONNX graphs
def test_frontier_runs_each_route_once_measures_fp32_and_int8_and_replots(script, at):
    frontier = script("frontier")
    out = at / "res" / "frontier"
    argv = ["--task", "sst2", "--teacher", "runs/teacher-sst2", "--glue-dir", str(at / "glue"), "--macs", "0.5",
            "--routes", "post-training", "gradual", "--steps", "2", "--threads", "1", "--out", str(out),
            "--not-run", "cofi-warm@0.5=too slow for a test"]
    assert frontier.main(argv) == 0
    doc = json.loads(out.with_name("frontier.json").read_text())
    (row,) = doc["rows"]                                                  # gradual has nothing above 0.5
    assert row["route"] == "post-training" and row["macs_kept"] <= 0.5 + 1e-9
    assert row["drop"] == pytest.approx(100 * (row["teacher"] - row["value"]), abs=0.01)
    assert row["minutes"] > 0 and row["command"].startswith("prunekit compress --teacher runs/teacher-sst2")
    for key in ("p50_ms_fp32_b32_s128", "p50_ms_int8_b1_s128", "speedup_int8_b32_s128", "int8_value"):
        assert key in row and key in doc["teachers"]["sst2"]
    assert doc["teachers"]["sst2"]["speedup_fp32_b32_s128"] == 1.0
    assert doc["not_run"] == {"gradual@0.5": "no intermediate budget above it: gradual = one shot here",
                              "cofi-warm@0.5": "too slow for a test"}
    assert (at / "runs" / "frontier" / "sst2" / "post-training-0.5-s0" / "model.safetensors").is_file()
    md = out.with_name("frontier.md").read_text()
    assert "| post-training | 50% |" in md and "Not run:" in md and out.with_name("frontier.png").is_file()
    (at / "reading.md").write_text("## What the rows show\n\nNothing yet.\n")
    assert frontier.main(argv + ["--no-latency", "--analysis", "reading.md"]) == 0   # a rerun runs nothing again
    assert len(json.loads(out.with_name("frontier.json").read_text())["rows"]) == 1
    assert out.with_name("frontier.md").read_text().endswith("## What the rows show\n\nNothing yet.\n")
    replots_the_same(frontier, out)


def test_frontier_keeps_the_rows_another_study_wrote_while_a_run_went_on(script, at, monkeypatch):
    """Two frontier studies (other routes) write the same OUT.json: the one finishing second keeps the
    first one's row, and a run whose row is already there is not run again."""
    frontier = script("frontier")
    out = at / "res" / "frontier"
    theirs = {"task": "sst2", "route": "gradual", "macs_target": 0.1, "seed": 0, "value": 0.86}
    ran = []

    def fake_run(cmd, log):  # the compress process: its report, and meanwhile the other study's row
        ran.append(cmd)
        run_dir = Path(cmd[cmd.index("--output") + 1])
        run_dir.mkdir(parents=True)
        (run_dir / "report.json").write_text(json.dumps({
            "main_metric": "accuracy", "macs_kept": 0.099,
            "dev_metrics": {"teacher": {"accuracy": 0.88}, "distilled": {"accuracy": 0.87}}}))
        if len(ran) == 1:
            frontier.write_results(out, doc={"rows": [theirs], "not_run": {}})
        return {"wall_seconds": 90.0, "load_before": [1.0], "load_after": [1.0]}

    monkeypatch.setattr(frontier, "run_logged", fake_run)
    args = frontier.build_parser().parse_args(["--task", "sst2", "--teacher", "t", "--steps", "7", "--out", str(out),
                                               "--runs-dir", str(at / "runs" / "f")])
    doc = frontier.previous(out)
    frontier.run_route(args, "glue", "pt-distill", 0.1, 0, doc)
    rows = json.loads(out.with_name("frontier.json").read_text())["rows"]
    assert [r["route"] for r in rows] == ["gradual", "pt-distill"] and doc["rows"] == rows
    assert Path(ran[0][ran[0].index("--output") + 1]) == at / "runs" / "f" / "sst2" / "pt-distill-0.1-s0-n7"
    assert rows[1]["drop"] == 1.0 and rows[1]["steps"] == 7 and rows[1]["minutes"] == 1.5
    frontier.run_route(args, "glue", "gradual", 0.1, 0, frontier.previous(out))  # other N: a run of its own
    assert len(ran) == 2 and "gradual-0.1-s0-n7" in str(ran[1])
    frontier.run_route(args, "glue", "pt-distill", 0.1, 0, frontier.previous(out))  # finished: not again
    assert len(ran) == 2


def test_frontier_refuses_a_bad_not_run_cell_and_a_missing_teacher(script, at, capsys):
    frontier = script("frontier")
    for argv, says in ((["--task", "sst2", "--teacher", "runs/teacher-sst2", "--not-run", "magic@0.1=x"],
                        "--not-run takes ROUTE@MACS=REASON"),
                       (["--task", "sst2", "--teacher", "runs/nothing"], "teacher directory not found: runs/nothing"),
                       (["--task", "sst2"], "give --task and --teacher"),
                       (["--task", "sst2", "--teacher", "runs/teacher-sst2", "--analysis", "gone.md"],
                        "--analysis gone.md: cannot read it")):
        assert frontier.main(argv + ["--out", str(at / "res" / "bad")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
        assert not (at / "res" / "bad.json").exists()
