"""The bench scripts as users run them: bad input is one line and exit 2 with nothing written, and
every committed results table is written again, byte for byte, from its JSON (--replot), which is how
a table made by a run of hours is checked to regenerate."""
import importlib
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


@pytest.fixture
def script():
    """A bench script's module, imported as `python bench/NAME.py` finds its neighbours: its folder
    first on sys.path (bench/studies/NAME for a study), taken off again afterwards. Only that entry:
    restoring the whole of sys.path would drop the folder onnxruntime.transformers appends to it."""
    added = []

    def load(name: str):
        folder = str(ROOT / "bench" / Path(name).parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)
            added.append(folder)
        return importlib.import_module(Path(name).name)
    yield load
    for folder in added:
        sys.path.remove(folder)


def one_line_exit_2(module, argv, capsys, tmp_path, says: str):
    before = sorted(tmp_path.rglob("*"))
    assert module.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{module.PROG}: error: ") and err.count("\n") == 1 and says in err, err
    assert sorted(tmp_path.rglob("*")) == before                      # nothing written


@pytest.fixture
def corrupt(tmp_path):
    (tmp_path / "corrupt.json").write_text('{"rows": [')
    (tmp_path / "a-file").write_text("x")
    return tmp_path


@pytest.mark.parametrize("argv, says", [
    (["--threads", "0"], "argument --threads: 0 is out of range"),
    (["--replot", "{tmp}/corrupt.json"], "corrupt.json is not a results JSON"),
    (["--max-rounds", "0"], "argument --max-rounds: 0 is out of range"),
    (["--budget", "nan"], "argument --budget: nan is out of range"),
    (["--out", "{tmp}/a-file/lat"], "a-file is a file, not a folder"),
    (["--pruned", "{tmp}/missing"], "model directory not found"),
    (["--min-rounds", "20", "--max-rounds", "10"], "--min-rounds 20 is more than --max-rounds 10"),
    (["--seq", "0"], "argument --seq: 0 is out of range"),
    (["--replot", "{tmp}/missing.json"], "no results file"),
])
def test_latency_bad_input_is_one_line_and_exit_2(script, capsys, corrupt, argv, says):
    argv = [a.format(tmp=corrupt) for a in argv] + (["--out", str(corrupt / "lat")] if "--out" not in argv else [])
    one_line_exit_2(script("latency"), argv, capsys, corrupt, says)


@pytest.mark.parametrize("argv, says", [
    (["--threads", "0"], "argument --threads: 0 is out of range"),
    (["--replot", "{tmp}/corrupt.json"], "corrupt.json is not a results JSON"),
    (["--rounds", "0"], "argument --rounds: 0 is out of range"),
    (["--threads", "nan"], "argument --threads: 'nan' is not an integer"),
    (["--out", "{tmp}/a-file/stacked"], "a-file is a file, not a folder"),
    (["--model", "dense={tmp}/missing"], "--model dense={tmp}/missing: model directory not found"),
    (["--model", "dense"], "--model takes LABEL=DIR, not 'dense'"),
    (["--replot", str(RESULTS / "latency.json")], "is not a results file of this script: it has no task"),
])
def test_stacked_bad_input_is_one_line_and_exit_2(script, capsys, corrupt, argv, says):
    (corrupt / "glue" / "SST-2").mkdir(parents=True)
    (corrupt / "dense").mkdir()
    argv = [a.format(tmp=corrupt) for a in argv]
    if "--model" not in argv:
        argv += ["--model", f"dense={corrupt / 'dense'}"]
    argv += ["--task", "sst2", "--glue-dir", str(corrupt / "glue")] + ([] if "--out" in argv else ["--out", str(corrupt / "s")])
    one_line_exit_2(script("stacked"), argv, capsys, corrupt, says.format(tmp=corrupt))


@pytest.mark.parametrize("name", ["cofi", "posttrain", "distill", "train_speed", "teachers", "cpu_isa",
                                  "kernels_compile", "gpu_check", "studies/compile_probe", "studies/fisher_precision",
                                  "studies/pruning_time", "studies/export_int8_quality", "studies/export_latency",
                                  "studies/malloc_ab"])
def test_every_replot_refuses_a_corrupt_results_file_in_one_line(script, capsys, corrupt, name):
    one_line_exit_2(script(name), ["--replot", str(corrupt / "corrupt.json")], capsys, corrupt, "is not a results JSON")


def test_kernels_compile_refuses_to_measure_in_the_triton_interpreter(script, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")    # the interpreter never runs the code generator it checks
    one_line_exit_2(script("kernels_compile"), ["--out", str(tmp_path / "kc")], capsys, tmp_path,
                    "unset TRITON_INTERPRET")


def test_the_parser_range_types_say_what_is_wrong(script):
    import argparse
    common = script("common")
    for kind, text, says in [(common.THREADS, "0", "0 is out of range (must be finite, >= 1 and <= 1024)"),
                             (common.SECONDS, "inf", "inf is out of range (must be finite, >= 0)"),
                             (common.COUNT, "2.5", "'2.5' is not an integer")]:
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(says)):
            kind(text)
    assert common.SECONDS("0") == 0.0 and common.THREADS("2") == 2


# name of the results file -> the script that wrote it (figures too where it draws them)
TABLES = {"cofi": "cofi", "posttrain": "posttrain", "distill": "distill", "teachers": "teachers",
          "train_speed_paths": "train_speed", "compile_probe": "studies/compile_probe",
          "fisher_precision": "studies/fisher_precision", "pruning_time": "studies/pruning_time",
          "export_int8": "studies/export_int8_quality", "export": "studies/export_latency",
          "train_speed_malloc": "studies/malloc_ab", "cpu_isa": "cpu_isa", "kernels_compile": "kernels_compile"}
DRAWN = {"latency": "latency", "optimize_race": "latency", "cofi_variants_latency": "latency",
         "cofi_variants_mrpc_latency": "latency", "stacked": "stacked", "stacked-smaller": "stacked",
         "stacked_openvino": "stacked", "openvino_latency": "latency", "frontier": "frontier"}


def regenerate(script, tmp_path, results: str, name: str) -> Path:
    shutil.copy(RESULTS / f"{results}.json", tmp_path / f"{results}.json")
    assert script(name).main(["--replot", str(tmp_path / f"{results}.json")]) == 0
    return tmp_path / f"{results}.md"


@pytest.mark.parametrize("results, name", TABLES.items())
def test_committed_table_regenerates_byte_for_byte_from_its_json(script, tmp_path, results, name):
    assert regenerate(script, tmp_path, results, name).read_bytes() == (RESULTS / f"{results}.md").read_bytes()


@pytest.mark.slow  # draws the figures (matplotlib)
@pytest.mark.parametrize("results, name", DRAWN.items())
def test_committed_table_and_figures_regenerate_from_their_json(script, tmp_path, results, name):
    assert regenerate(script, tmp_path, results, name).read_bytes() == (RESULTS / f"{results}.md").read_bytes()
    pngs = sorted(tmp_path.glob(f"{results}-*.png")) + sorted(tmp_path.glob(f"{results}.png"))  # several or one
    assert pngs and all((RESULTS / p.name).is_file() for p in pngs)   # the figures the committed table shows
    assert json.loads((tmp_path / f"{results}.json").read_text()) == json.loads((RESULTS / f"{results}.json").read_text())


def test_every_committed_table_with_a_json_is_checked_here():
    # train_speed.md is a written account; its train_speed.json is a table of teachers.md
    made_by_json = {p.stem for p in RESULTS.glob("*.json") if p.with_suffix(".md").is_file()} - {"train_speed"}
    assert made_by_json == set(TABLES) | set(DRAWN)


@pytest.mark.slow  # exports six ONNX graphs (int8 static calibrated), scores and times them in ONNX Runtime
def test_stacked_scores_and_times_every_variant_and_its_table_regenerates(script, tmp_path, tok, sst2_glue_dir):
    import torch

    import prunekit
    from conftest import tiny_model
    dense = tiny_model(0, vocab_size=tok.vocab_size, max_position_embeddings=128, num_labels=2)
    dense.tokenizer = tok
    dense.save_pretrained(tmp_path / "dense")
    compact = prunekit.prune(dense, prunekit.Masks(z_head=torch.tensor([[1., 0, 0, 1], [0, 1, 0, 0], [1, 1, 1, 0]])))
    compact.tokenizer = tok
    compact.save_pretrained(tmp_path / "pruned")
    out = tmp_path / "res" / "stacked"
    stacked = script("stacked")
    assert stacked.main(["--task", "sst2", "--model", f"dense={tmp_path / 'dense'}", "--model",
                         f"pruned={tmp_path / 'pruned'}", "--rounds", "1", "--threads", "1", "--glue-dir",
                         str(sst2_glue_dir), "--cache", str(tmp_path / "cache"), "--out", str(out)]) == 0
    doc = json.loads((tmp_path / "res" / "stacked.json").read_text())
    assert [(r["model"], r["variant"]) for r in doc["rows"]] == [
        (m, v) for m in ("dense", "pruned") for v in ("fp32", "int8 dynamic", "int8 static")]
    for r in doc["rows"]:
        assert 0 <= r["accuracy"] <= 1 and r["p50_ms_b1_s128"] > 0 and r["p50_ms_b32_s128"] > 0
    assert doc["rows"][0]["speedup_b32_s128"] == 1.0 and doc["rows"][3]["macs_kept"] < 1
    md = (tmp_path / "res" / "stacked.md").read_text()
    assert (tmp_path / "res" / "stacked-pareto.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "res" / "stacked.md").unlink()
    assert stacked.main(["--replot", str(tmp_path / "res" / "stacked.json")]) == 0
    assert (tmp_path / "res" / "stacked.md").read_text() == md
