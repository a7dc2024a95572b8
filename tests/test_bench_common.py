"""The pieces every bench script stands on (prunekit.benchmark): the table writer, atomic results,
the output check, reading results back, the one-line ending of a script, the CLI launcher, the
GLUE-dir requirement, and a runner fed its inputs."""
import argparse
import itertools
import json
import sys

import pytest

from prunekit import benchmark
from prunekit.benchmark import (check_out, prunekit_command, render_results, require_glue_dir, rewrite_table,
                                run_logged, run_script, save_figure, table, time_interleaved, timed_calls,
                                write_results)
from prunekit.errors import PrunekitError


def test_table_aligns_columns_and_writes_cells_as_given():
    md = table(["model", "P50 ms", "note"], [["dense", "10.00", ""], ["pruned", 4.5, "x|y"]], "lrl")
    assert md.splitlines() == ["| model | P50 ms | note |", "|---|---:|---|", "| dense | 10.00 |  |",
                               "| pruned | 4.5 | x|y |"]


@pytest.mark.parametrize("header, rows, align", [(["a", "b"], [["1", "2"]], "l"),      # align shorter than header
                                                 (["a", "b"], [["1", "2"]], "lc"),     # an unknown alignment
                                                 (["a", "b"], [["1"]], "ll")])         # a short row
def test_table_refuses_rows_or_alignment_that_do_not_fit_the_header(header, rows, align):
    with pytest.raises(ValueError):
        table(header, rows, align)


def test_write_results_writes_md_and_json_beside_a_prefix_with_a_dot(tmp_path):
    out = tmp_path / "res" / "pt-0.5"                      # Path.with_suffix would turn this into pt-0.md
    written = write_results(out, "# table\n", {"rows": [1, 2]})
    assert sorted(written) == [str(tmp_path / "res" / "pt-0.5.json"), str(tmp_path / "res" / "pt-0.5.md")]
    assert (tmp_path / "res" / "pt-0.5.md").read_text() == "# table\n"
    assert json.loads((tmp_path / "res" / "pt-0.5.json").read_text()) == {"rows": [1, 2]}


def test_write_results_that_fail_leave_the_previous_files_whole_and_no_temp_files(tmp_path):
    out = tmp_path / "lat"
    write_results(out, "old\n", {"rows": ["old"]})
    with pytest.raises(TypeError):
        write_results(out, "new\n", {"rows": {"a set is not JSON"}})
    assert json.loads((tmp_path / "lat.json").read_text()) == {"rows": ["old"]}
    assert (tmp_path / "lat.md").read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lat.json", "lat.md"]


def test_save_figure_writes_a_png_or_nothing(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    ax.plot([1, 2], [3, 4])
    assert save_figure(fig, tmp_path / "f.png", dpi=50) == str(tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.get_fignums()                           # the figure was closed
    fig, _ = plt.subplots()
    with pytest.raises(ValueError):
        save_figure(fig, tmp_path / "g.png", dpi=-1)
    plt.close("all")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png"]


def test_check_out_accepts_a_new_nested_prefix_without_creating_it(tmp_path):
    assert check_out(tmp_path / "a" / "b" / "lat") == tmp_path / "a" / "b" / "lat"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where, says", [("folder", "is a folder"), ("under-file", "is a file, not a folder")])
def test_check_out_refuses_a_folder_or_a_path_under_a_file(tmp_path, where, says):
    (tmp_path / "f").write_text("x")
    out = tmp_path if where == "folder" else tmp_path / "f" / "lat"
    with pytest.raises(PrunekitError, match=says):
        check_out(out)


def test_check_out_refuses_a_folder_it_cannot_write_in(monkeypatch, tmp_path):
    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(benchmark.tempfile, "TemporaryFile", no_space)
    with pytest.raises(PrunekitError, match="cannot write in .*No space left on device"):
        check_out(tmp_path / "lat")


@pytest.mark.parametrize("content, says", [(None, "no results file"), ("{broken", "is not a results JSON"),
                                           ("[1, 2]", "has no rows"), ('{"other": 1}', "has no rows"),
                                           ('{"rows": [{"x": 1}]}', "does not hold what this script writes")])
def test_render_results_turns_every_unreadable_file_into_one_error(tmp_path, content, says):
    path = tmp_path / "r.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(PrunekitError, match=says) as e:
        render_results(path, lambda doc: [row["p50_ms"] for row in doc["rows"]])
    assert "\n" not in str(e.value)


def test_rewrite_table_writes_the_markdown_beside_the_json(tmp_path):
    (tmp_path / "x-0.5.json").write_text(json.dumps({"rows": [{"v": 3}]}))
    written = rewrite_table(tmp_path / "x-0.5.json", lambda doc: f"v = {doc['rows'][0]['v']}\n")
    assert written == [str(tmp_path / "x-0.5.md")] and (tmp_path / "x-0.5.md").read_text() == "v = 3\n"


def body_failing_with(exc):
    def body(argv):
        raise exc
    return body


@pytest.mark.parametrize("exc, line", [
    (PrunekitError("--out x: bad"), "bench/x.py: error: --out x: bad\n"),
    (PermissionError(13, "Permission denied", "/r/o/x.md"), "bench/x.py: error: Permission denied: /r/o/x.md\n"),
    (OSError("no strerror"), "bench/x.py: error: no strerror\n")])
def test_run_script_ends_bad_input_and_failed_writes_in_one_line_and_exit_2(capsys, monkeypatch, exc, line):
    monkeypatch.delenv("PRUNEKIT_DEBUG", raising=False)
    assert run_script("bench/x.py", body_failing_with(exc)) == 2
    assert capsys.readouterr().err == line


def test_run_script_passes_usage_errors_help_and_success_through(capsys):
    p = argparse.ArgumentParser(prog="bench/x.py")
    p.add_argument("--n", type=int)
    assert run_script("bench/x.py", lambda argv: p.parse_args(argv) and 0, ["--n", "x"]) == 2
    assert run_script("bench/x.py", lambda argv: p.parse_args(argv) and 0, ["--help"]) == 0
    assert run_script("bench/x.py", lambda argv: None, []) == 0
    assert run_script("bench/x.py", body_failing_with(KeyboardInterrupt()), []) == 130


def test_run_script_shows_the_traceback_under_prunekit_debug(monkeypatch):
    monkeypatch.setenv("PRUNEKIT_DEBUG", "1")
    with pytest.raises(PrunekitError):
        run_script("bench/x.py", body_failing_with(PrunekitError("bad")))


def test_prunekit_command_is_this_interpreters_module_not_a_path_lookup():
    assert prunekit_command("info", "minilm", 3) == [sys.executable, "-m", "prunekit.cli", "info", "minilm", "3"]


@pytest.mark.slow  # spawns a Python process that imports prunekit
def test_prunekit_command_launches_the_cli(tmp_path):
    with pytest.raises(PrunekitError, match=r"exit code 2; see .*cli\.log"):
        run_logged(prunekit_command("info", "--seq-len", "-5"), tmp_path / "cli.log")
    log = (tmp_path / "cli.log").read_text()
    assert "-m prunekit.cli info --seq-len -5" in log and "argument --seq-len: -5 is out of range" in log


@pytest.mark.slow  # spawns a process
def test_run_logged_appends_the_command_and_its_output_and_times_it(tmp_path):
    log = tmp_path / "logs" / "run.log"
    timing = run_logged([sys.executable, "-c", "import os; print('hello', os.environ['X'])"], log, env={"X": "42"})
    run_logged([sys.executable, "-c", "print('again')"], log)
    text = log.read_text()
    assert "hello 42" in text and text.index("hello 42") < text.index("again") and text.count("\n$ ") == 2
    assert timing["wall_seconds"] >= 0 and set(timing) == {"wall_seconds", "load_before", "load_after"}


def test_require_glue_dir_names_what_is_missing(tmp_path):
    with pytest.raises(PrunekitError, match="no GLUE data: set GLUE_DIR or pass --glue-dir"):
        require_glue_dir(None, ["sst2"])
    (tmp_path / "SST-2").mkdir()
    assert require_glue_dir(tmp_path, ["sst2"]) == str(tmp_path)
    with pytest.raises(PrunekitError, match="has no MRPC, RTE folder"):
        require_glue_dir(tmp_path, ["sst2", "mrpc", "rte"])


def test_timed_calls_feeds_inputs_in_turn_and_is_clocked_even_when_fn_returns_a_float():
    seen, state = [], {"t": 0.0}

    def train_step(batch):       # returns its loss, a float, as Trainer.train_step does
        seen.append(batch)
        state["t"] += 0.5
        return 123.0
    times = time_interleaved({"a": timed_calls(train_step, [1, 2, 3]), "b": timed_calls(lambda x: None, itertools.repeat(0))},
                             rounds=3, clock=lambda: state["t"])
    assert seen == [1, 2, 3] and times["a"] == [0.5, 0.5, 0.5] and times["b"] == [0.0, 0.0, 0.0]
