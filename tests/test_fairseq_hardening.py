"""Hardening of the fairseq plugin (issue 9): --user-dir spellings, one-line errors of our types in
fairseq's CLIs, and one error path per CLI of the plugin (our errors and the OS errors a user can
cause -> one line naming the file and the remedy, exit status 2; genuine bugs keep tracebacks)."""

from __future__ import annotations

import argparse
import errno
import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fairseq")

import fairseq_plugin  # noqa: E402
from fairseq_plugin import bleu, errors, prepare_iwslt, prepare_offline  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- --user-dir spellings ----------
def test_user_dir_through_a_symlinked_parent_is_the_same_plugin(tmp_path):
    """fairseq compares the --user-dir string with the imported package's __path__: a symlinked
    spelling of the already imported folder used to fail as 'not globally unique'."""
    from fairseq import utils

    (tmp_path / "cluster_home").symlink_to(REPO, target_is_directory=True)
    spelled = tmp_path / "cluster_home" / "fairseq_plugin"
    assert os.path.abspath(spelled) not in list(fairseq_plugin.__path__)  # really another spelling
    utils.import_user_module(argparse.Namespace(user_dir=str(spelled)))  # raised ImportError before
    utils.import_user_module(argparse.Namespace(user_dir=str(REPO / "fairseq_plugin" / ".")))
    other = tmp_path / "copy" / "fairseq_plugin"  # a different folder of the same name: still refused
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("")
    with pytest.raises(ImportError, match="not globally unique"):
        utils.import_user_module(argparse.Namespace(user_dir=str(other)))


# ---------------------------------------------------------------- excepthook --------------------
def test_excepthook_prints_our_errors_as_one_line_and_passes_others_on(capsys, monkeypatch):
    seen = []
    hook = errors._excepthook(lambda *exc: seen.append(exc[0]))
    monkeypatch.delenv(errors.TRACEBACK_ENV, raising=False)
    try:
        raise errors.CriterionConfigError("kd_beta must be in [0, 1], got 2.0")
    except errors.CriterionConfigError as error:
        hook(type(error), error, error.__traceback__)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lskd: error: kd_beta must be in [0, 1], got 2.0")
    assert seen == []
    hook(ValueError, ValueError("a bug"), None)  # not ours: the previous hook shows the traceback
    hook(KeyError, KeyError("x"), None)
    assert seen == [ValueError, KeyError] and capsys.readouterr().err == ""
    monkeypatch.setenv(errors.TRACEBACK_ENV, "1")
    hook(errors.UsageError, errors.UsageError("x"), None)
    assert seen[-1] is errors.UsageError


def test_importing_the_plugin_installs_the_hook_in_a_real_interpreter():
    code = ("import fairseq_plugin\nfrom fairseq_plugin.errors import TeacherNotFoundError\n"
            "raise TeacherNotFoundError('teacher checkpoint not found: /x/t.pt (from --teacher-path)')")
    env = dict(os.environ, PYTHONPATH=str(REPO), LSKD_FAIRSEQ_AUTOLOAD="0")
    env.pop(errors.TRACEBACK_ENV, None)
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "lskd: error: teacher checkpoint not found: /x/t.pt (from --teacher-path)" in proc.stderr


# ---------------------------------------------------------------- CLIs: bleu --------------------
def _one_error_line(capsys, prog: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    return lines[0]


def test_bleu_cli_one_line_errors(tmp_path, capsys):
    assert bleu.main([str(tmp_path / "gen.out"), "--lang", "de"]) == 2
    assert "gen.out: no such file or directory" in _one_error_line(capsys, "bleu")
    binary = tmp_path / "gen.bin"
    binary.write_bytes(b"H-0\t-1\t\xff\xfe\x00garbage")
    assert bleu.main([str(binary), "--lang", "de"]) == 2
    assert "gen.bin: not UTF-8 text" in _one_error_line(capsys, "bleu")
    assert bleu.main([str(tmp_path), "--lang", "de"]) == 2
    assert "is a directory" in _one_error_line(capsys, "bleu")
    (tmp_path / "file").write_text("x")
    assert bleu.main([str(tmp_path / "file" / "gen.out"), "--lang", "de"]) == 2
    assert "not a directory" in _one_error_line(capsys, "bleu")
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    assert bleu.main([str(text), "--lang", "de"]) == 2
    assert "notes.txt: no H-/T- line pairs" in _one_error_line(capsys, "bleu")
    good = tmp_path / "good.out"
    good.write_text("T-0\tja , das ist es\nH-0\t-0.1\tja , das ist es\n", encoding="utf-8")
    assert bleu.main([str(good), "--lang", "de", "--ref", str(binary)]) == 2
    assert "gen.bin: not UTF-8 text" in _one_error_line(capsys, "bleu")


def test_bleu_cli_keeps_tracebacks_for_bugs(tmp_path, monkeypatch):
    good = tmp_path / "good.out"
    good.write_text("T-0\tja\nH-0\t-0.1\tja\n", encoding="utf-8")
    monkeypatch.setattr(bleu, "score", lambda *a, **k: {}["bug"])
    with pytest.raises(KeyError):
        bleu.main([str(good), "--lang", "de"])


# ---------------------------------------------------------------- CLIs: corpora -----------------
@pytest.mark.parametrize("code, phrase", [
    (errno.ENOSPC, "no space left on the device"),
    (errno.EROFS, "read-only file system"),
    (errno.EACCES, "permission denied"),
])
def test_prepare_offline_os_errors_name_the_output(tmp_path, capsys, monkeypatch, code, phrase):
    out = tmp_path / "ende"

    def full_disk(*args, **kwargs):
        raise OSError(code, os.strerror(code))  # what write() reports: no file name

    monkeypatch.setattr(prepare_offline, "prepare", full_disk)
    assert prepare_offline.main(["--pair", "en-de", "--out", str(out)]) == 2
    line = _one_error_line(capsys, "prepare_offline")
    assert str(out) in line and phrase in line


def test_prepare_offline_bad_inputs(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert prepare_offline.main(["--pair", "en-de", "--out", str(tmp_path / "o"),
                                 "--source-file", str(tmp_path / "absent")]) == 2
    assert "absent not found" in _one_error_line(capsys, "prepare_offline")
    corrupt = tmp_path / "mueller7.dict.dz"
    corrupt.write_bytes(gzip.compress(b"entry text " * 500)[:40])  # truncated download
    (tmp_path / "mueller7.index").write_text("a\tA\tB\n", encoding="utf-8")
    assert prepare_offline.main(["--pair", "en-ru", "--out", str(tmp_path / "o"),
                                 "--source-file", str(corrupt)]) == 2
    line = _one_error_line(capsys, "prepare_offline")
    assert "mueller7.dict.dz: corrupt compressed dictionary" in line
    assert prepare_offline.main(["--pair", "en-de", "--out", str(tmp_path / "o"), "--max-pairs", "1"]) == 2
    assert "max_pairs must be at least 3" in _one_error_line(capsys, "prepare_offline")
    assert prepare_offline.main(["--pair", "en-de", "--out", str(tmp_path / "o"), "--min-words", "5",
                                 "--max-words", "4"]) == 2
    assert "min_words <= max_words" in _one_error_line(capsys, "prepare_offline")
    assert prepare_offline.main(["--pair", "en-de", "--out", str(tmp_path / "o"), "--min-words", "3",
                                 "--train-min-words", "4"]) == 2
    assert "train_min_words <= min_words" in _one_error_line(capsys, "prepare_offline")


def test_prepare_iwslt_bad_archive(tmp_path, capsys):
    orig = tmp_path / "de-en"
    orig.mkdir()
    assert prepare_iwslt.main(["--pair", "en-de", "--orig", str(orig), "--out", str(tmp_path / "o")]) == 2
    assert "the extracted IWSLT'14 de-en archive" in _one_error_line(capsys, "prepare_iwslt")
    for lang in ("en", "de"):
        (orig / f"train.tags.de-en.{lang}").write_bytes(b"<url>x</url>\nok\n\xc3\x28 broken\n")
    assert prepare_iwslt.main(["--pair", "en-de", "--orig", str(orig), "--out", str(tmp_path / "o")]) == 2
    assert "train.tags.de-en.en: not UTF-8 text" in _one_error_line(capsys, "prepare_iwslt")
    (tmp_path / "file").write_text("x")
    for lang in ("en", "de"):
        (orig / f"train.tags.de-en.{lang}").write_text("a b c\n", encoding="utf-8")
        (orig / f"IWSLT14.TED.tst2010.de-en.{lang}.xml").write_text('<seg id="1"> a b </seg>\n')
    assert prepare_iwslt.main(["--pair", "en-de", "--orig", str(orig), "--out",
                               str(tmp_path / "file" / "out"), "--workers", "1", "--bpe-size", "5"]) == 2
    assert "not a directory" in _one_error_line(capsys, "prepare_iwslt")


def test_autoload_cli_one_line_errors(tmp_path, capsys):
    from fairseq_plugin import autoload

    assert autoload.main(["install", "--site-dir", str(tmp_path / "missing")]) == 2
    line = _one_error_line(capsys, "autoload")
    assert "missing" in line and "site_dir must be an existing directory" in line
    (tmp_path / "file").write_text("x")
    assert autoload.main(["install", "--site-dir", str(tmp_path / "file")]) == 2
    assert "file" in _one_error_line(capsys, "autoload")
    assert autoload.main(["install", "--site-dir", str(tmp_path)]) == 0
    assert (tmp_path / autoload.PTH_NAME).is_file()
