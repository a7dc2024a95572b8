"""`prunekit info` and the CLI's bad-input contract (one line on stderr, exit 2)."""
import subprocess
import sys

from prunekit.cli import main


def test_info_prints_per_layer_table_for_minilm(capsys):
    assert main(["info", "minilm"]) == 0
    out = capsys.readouterr().out
    assert "encoder params (CoFi definition) 10,637,568" in out
    assert out.count("   12   1536  yes  yes") == 6


def test_info_on_missing_model_is_one_line_exit_2():
    r = subprocess.run([sys.executable, "-m", "prunekit.cli", "info", "/nonexistent/model"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "model directory not found" in r.stderr
    assert "Traceback" not in r.stderr
