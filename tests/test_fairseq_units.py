"""Fast tests of fairseq_plugin's pieces that need no training run.

Top-K densification, BLEU arithmetic, the Debian corpus parsers (on small synthetic files written
here, not on the GPL data), the deterministic split, the safe-loading allow-list and its errors,
criterion argument validation and the autoload ``.pth`` hook (with stand-in ``fairseq`` and
``fairseq_plugin`` packages, so its ordering guarantees are tested without fairseq's start-up cost).
"""

from __future__ import annotations

import fractions
import gzip
import math
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("fairseq")

from fairseq_plugin import autoload, bleu, prepare_offline  # noqa: E402
from fairseq_plugin.criterions.ls_kd import LskdCriterion  # noqa: E402
from fairseq_plugin.safe_load import CheckpointLoadError, load_checkpoint_state, unsafe_globals  # noqa: E402
from fairseq_plugin.teacher import expand_topk, first_difference, split_teacher_paths  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- top-K -----------------------
def test_expand_topk_keeps_topk_and_spreads_rest_uniformly():
    probs = torch.softmax(torch.randn(4, 7, 10, generator=torch.Generator().manual_seed(0)), dim=-1)
    values, indices = probs.topk(3, dim=-1)
    dense = expand_topk(values, indices, 10)
    assert torch.allclose(dense.sum(-1), torch.ones(4, 7), atol=1e-6)
    assert torch.equal(dense.gather(-1, indices), values)
    rest = (1 - values.sum(-1)) / 7
    others = torch.ones_like(dense, dtype=torch.bool).scatter_(-1, indices, False)
    assert torch.allclose(dense[others].view(4, 7, 7), rest.unsqueeze(-1).expand(4, 7, 7), atol=1e-7)


def test_expand_topk_with_k_equal_vocab_is_the_distribution():
    probs = torch.softmax(torch.randn(5, 6, generator=torch.Generator().manual_seed(1)), dim=-1)
    values, indices = probs.topk(6, dim=-1)
    assert torch.allclose(expand_topk(values, indices, 6), probs, atol=0, rtol=0)
    with pytest.raises(ValueError, match="exceeds the vocabulary size"):
        expand_topk(values, indices, 5)


def test_split_teacher_paths_is_colon_separated():
    assert split_teacher_paths("a.pt:b.pt") == ["a.pt", "b.pt"]
    assert split_teacher_paths("") == []


def test_first_difference_names_index_and_symbols():
    from fairseq.data import Dictionary

    a, b = Dictionary(), Dictionary()
    for word in ("hallo", "welt"):
        a.add_symbol(word)
    for word in ("hallo", "world", "x"):
        b.add_symbol(word)
    assert first_difference(a, a) is None
    assert first_difference(a, b) == (5, "welt", "world")


# ---------------------------------------------------------------- BLEU -------------------------
GEN = [
    "S-1\tthe house is small",
    "T-1\tdas haus ist klein .",
    "H-1\t-0.5\tdas haus ist klein",
    "D-1\t-0.5\tdas haus ist klein",
    "P-1\t-0.1 -0.2",
    "S-0\tyes",
    "T-0\tja , das ist es",
    "H-0\t-0.1\tja , das ist es",
    "Generate test with beam=5: BLEU4 = 1.00",
]


def test_parse_generate_output_keeps_ids_and_text():
    parsed = bleu.parse_generate_output(GEN)
    assert parsed[1] == {"S": "the house is small", "T": "das haus ist klein .", "H": "das haus ist klein"}
    assert parsed[0]["H"] == "ja , das ist es"


def test_bleu_matches_hand_computation():
    # Tokenised: hyp 4+5 tokens, ref 5+5. All hypothesis n-grams match (p_n = 1), so
    # BLEU = BP = exp(1 - 10 / 9).
    result = bleu.score(GEN, "de")
    assert result["bleu_tok"] == pytest.approx(100 * math.exp(1 - 10 / 9), abs=1e-3)
    assert result["sentences"] == 2
    identical = ["T-1\tdas haus ist klein .", "H-1\t-0.5\tdas haus ist klein .",
                 "T-0\tja , das ist es", "H-0\t-0.1\tja , das ist es"]
    assert bleu.score(identical, "de")["bleu_tok"] == pytest.approx(100.0)
    references = ["Ja, das ist es\n", "Das Haus ist klein.\n"]  # line i = sentence id i
    assert bleu.score(identical, "de", references=references, lowercase=True)["bleu_detok"] == pytest.approx(100.0)
    assert bleu.score(identical, "de", references=references)["bleu_detok"] < 100.0  # case differs


def test_chrf_is_sacrebleus_chrf_of_the_detokenised_pair():
    from sacrebleu.metrics import CHRF

    identical = ["T-1\tdas haus ist klein .", "H-1\t-0.5\tdas haus ist klein ."]
    assert bleu.score(identical, "de")["chrf"] == pytest.approx(100.0)
    result = bleu.score(GEN, "de", lowercase=True)
    hyps = ["ja, das ist es", "das haus ist klein"]  # id order 0, 1, Moses-detokenised by hand
    refs = ["ja, das ist es", "das haus ist klein."]
    expected = CHRF(lowercase=True).corpus_score(hyps, [refs]).score
    assert result["chrf"] == pytest.approx(expected, abs=1e-3) and 0.0 < result["chrf"] < 100.0
    assert "chrF2" in result["chrf_signature"] or "nc:6" in result["chrf_signature"]


def test_bleu_rejects_non_generate_output():
    with pytest.raises(ValueError, match="no H-/T- line pairs"):
        bleu.score(["hello"], "de")


# ---------------------------------------------------------------- corpus -----------------------
def test_ding_parser_aligns_senses_and_strips_annotations(tmp_path):
    path = tmp_path / "de-en"
    path.write_text(textwrap.dedent("""\
        # comment line :: ignored
        Haus {n} [arch.] | Das Haus ist sehr alt. | Häuser {pl} :: house | The house is very old. | houses
        Baum {m}; Bäume {pl} | Der Baum ist grün. :: tree | The tree is green. | extra sense
        gehen {vi} | Wir gehen nach Hause (am Abend). :: to go | We go home.
        Auto | Wagen / Karre :: car | vehicle / cart
        """), encoding="utf-8")
    pairs = prepare_offline.read_ding_pairs(str(path))
    assert ("The house is very old.", "Das Haus ist sehr alt.") in pairs
    assert ("We go home.", "Wir gehen nach Hause.") in pairs
    assert ("house", "Haus") in pairs
    assert not any("tree" in en for en, _ in pairs)  # 2 vs 3 senses: not alignable
    assert not any("/" in en or "/" in de for en, de in pairs)
    assert ("vehicle / cart", "Wagen / Karre") not in pairs


def _b64(value: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    digits = ""
    while True:
        digits = alphabet[value % 64] + digits
        value //= 64
        if value == 0:
            return digits


def test_mueller_parser_reads_dictd_examples(tmp_path):
    entries = [
        ("apple", "apple\n   [↗æpl] _n. яблоко; the apple of discord яблоко раздора\n"),
        ("go", "go\n   [gɜʊ] _v.\n   1) идти; to go home\n   идти домой\n   2) _разг. ехать; go by bus (или car) ехать\n"),
        ("tea", "tea\n   [ti:] _n. чай; tea party (A) чаепитие; black tea а) чёрный чай б) крепкий\n"),
    ]
    body, index = b"", []
    for word, text in entries:
        raw = text.encode("utf-8")
        index.append(f"{word}\t{_b64(len(body))}\t{_b64(len(raw))}\n")
        body += raw
    dict_path = tmp_path / "mini.dict.dz"
    with gzip.open(dict_path, "wb") as handle:
        handle.write(body)
    (tmp_path / "mini.index").write_text("".join(index), encoding="utf-8")
    pairs = prepare_offline.read_mueller_pairs(str(dict_path), str(tmp_path / "mini.index"))
    assert ("the apple of discord", "яблоко раздора") in pairs
    assert ("to go home", "идти домой") in pairs
    assert not any("black tea" in en for en, _ in pairs)  # а) б) sub-senses: ambiguous
    assert all(not any("a" <= ch <= "z" for ch in ru.lower()) for _, ru in pairs)


def test_clean_and_split_are_deterministic_without_source_overlap():
    pairs = [(f"source sentence number {i}", f"zielsatz nummer {i} hier") for i in range(200)]
    pairs += [("source sentence number 3", "duplicate source other target")]
    pairs += [("too short", "zu kurz"), ("one two three " * 30, "eins zwei drei")]
    cleaned = prepare_offline.clean_pairs(pairs)
    assert len(cleaned) == 200
    first = prepare_offline.split_pairs(cleaned, 20, 30, seed=1)
    again = prepare_offline.split_pairs(list(reversed(cleaned)), 20, 30, seed=1)
    assert first == again
    assert [len(first[k]) for k in ("train", "valid", "test")] == [150, 20, 30]
    sources = [s for split in first.values() for s, _ in split]
    assert len(sources) == len(set(sources))
    other = prepare_offline.split_pairs(cleaned, 20, 30, seed=2)
    assert other["test"] != first["test"]
    capped = prepare_offline.split_pairs(cleaned, 5, 5, seed=1, max_pairs=50)
    assert sum(len(v) for v in capped.values()) == 50
    with pytest.raises(ValueError, match="valid_size \\+ test_size"):
        prepare_offline.split_pairs(cleaned, 100, 100)


def test_short_pairs_train_but_never_reach_valid_or_test():
    long_pairs = [(f"source sentence number {i}", f"zielsatz nummer {i} hier") for i in range(100)]
    short_pairs = [(f"word{i}", f"wort{i}") for i in range(100)]
    cleaned = prepare_offline.clean_pairs(long_pairs + short_pairs, min_words=1)
    assert len(cleaned) == 200
    split = prepare_offline.split_pairs(cleaned, 10, 20, seed=1, eval_min_words=3)
    assert [len(split[k]) for k in ("train", "valid", "test")] == [170, 10, 20]
    for name in ("valid", "test"):
        assert all(len(src.split()) >= 3 and len(tgt.split()) >= 3 for src, tgt in split[name])
    assert set(short_pairs) <= set(split["train"])  # every short pair trains; none is lost
    held_out = set(split["valid"]) | set(split["test"])
    assert not held_out & set(split["train"])
    with pytest.raises(ValueError, match="out of 100 pairs"):  # only the long pairs are eligible
        prepare_offline.split_pairs(cleaned, 50, 50, eval_min_words=3)


def test_missing_debian_file_names_the_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install trans-de-en"):
        prepare_offline.source_files("en-de", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="apt-get install mueller7-dict"):
        prepare_offline.source_files("en-ru", str(tmp_path / "nope.dict.dz"))
    with pytest.raises(ValueError, match="pair must be one of"):
        prepare_offline.source_files("en-fr")


# ---------------------------------------------------------------- safe loading -----------------
def test_allow_list_covers_pickled_omegaconf_configs(tmp_path):
    import argparse

    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"task": {"data": "x", "langs": [1, 2]}, "model": argparse.Namespace(a=1)},
                           flags={"allow_objects": True})
    path = tmp_path / "cfg.pt"
    torch.save({"cfg": cfg, "args": argparse.Namespace(lr=[0.1]), "model": {}}, path)
    assert unsafe_globals(str(path)) == []
    loaded = torch.load(path, weights_only=True)
    assert loaded["cfg"].task.langs[1] == 2 and loaded["args"].lr == [0.1]


def test_allow_list_reads_numpy_arrays_of_eval_bleu_checkpoints(tmp_path):
    # fairseq-train --eval-bleu stores the best BLEU's n-gram counts as numpy arrays
    path = tmp_path / "eval_bleu.pt"
    counts = np.arange(4, dtype=np.int64)
    torch.save({"model": {}, "cfg": {}, "extra_state": {"counts": counts, "len": np.array(3.5)}}, path)
    assert unsafe_globals(str(path)) == []  # also registers the allow-list for this process
    state = torch.load(path, weights_only=True)
    assert np.array_equal(state["extra_state"]["counts"], counts) and float(state["extra_state"]["len"]) == 3.5
    objects = tmp_path / "objects.pt"  # an object array could carry anything: still refused
    torch.save({"model": {}, "cfg": {}, "x": np.array([fractions.Fraction(1, 3)], dtype=object)}, objects)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(objects, weights_only=True)


def test_unknown_global_is_refused_with_file_and_global_named(tmp_path):
    path = tmp_path / "odd.pt"
    torch.save({"model": {}, "cfg": {}, "extra": fractions.Fraction(1, 3)}, path)
    with pytest.raises(CheckpointLoadError) as info:
        load_checkpoint_state(str(path))
    message = str(info.value)
    assert str(path) in message and "fractions.Fraction" in message
    assert "--teacher-unsafe-load" in message and "arbitrary code" in message


def test_missing_and_corrupt_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="teacher checkpoint not found"):
        load_checkpoint_state(str(tmp_path / "absent.pt"))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointLoadError, match="corrupt or not a torch/fairseq checkpoint"):
        load_checkpoint_state(str(garbage))
    # seeded garbage of several sizes: torch's unpickler raises IndexError, struct.error, KeyError, ...
    # on such bytes; each must become the one-line error, never a traceback
    rng = np.random.default_rng(0)
    for size in [1, 2, 3, 8, 64, 4096] * 40:
        garbage.write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        with pytest.raises(CheckpointLoadError):
            load_checkpoint_state(str(garbage))
    good = tmp_path / "good.pt"
    torch.save({"model": {"w": torch.zeros(1000)}, "cfg": {}}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointLoadError, match="corrupt"):
        load_checkpoint_state(str(truncated))
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointLoadError, match="corrupt"):
        load_checkpoint_state(str(empty))
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointLoadError, match="not a fairseq checkpoint"):
        load_checkpoint_state(str(plain))


# ---------------------------------------------------------------- criterion args ---------------
class _NoDictTask:
    target_dictionary = None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kd_temperature": 0.0}, "kd_temperature must be a positive finite number, got 0.0"),
        ({"kd_temperature": -2}, "kd_temperature must be a positive finite number"),
        ({"kd_temperature": float("nan")}, "kd_temperature"),
        ({"kd_beta": 1.5}, "kd_beta must be in \\[0, 1\\]"),
        ({"label_smoothing": 1.0}, "label_smoothing must be in \\[0, 1\\)"),
        ({"kd_topk": -1}, "kd_topk must be >= 0"),
        ({"teacher_path": ""}, "teacher_path is required when kd_beta > 0"),
    ],
)
def test_criterion_rejects_bad_arguments(kwargs, match, tmp_path):
    args = {"teacher_path": str(tmp_path / "t.pt")}
    (tmp_path / "t.pt").write_bytes(b"x")
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        LskdCriterion(_NoDictTask(), sentence_avg=False, **args)


class _Pad:
    def pad(self) -> int:
        return 1


class _PadTask:
    target_dictionary = _Pad()


class _TinyDecoderModel(torch.nn.Module):
    """Stands in for a fairseq model: logits [B, L, V] from the target tokens, targets = sample's."""

    def __init__(self, vocab: int = 6):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, vocab)

    def forward(self, src_tokens, prev_output_tokens, **_):
        return (self.embed(prev_output_tokens),)

    def get_targets(self, sample, net_output):
        return sample["target"]


def _tiny_sample():
    target = torch.tensor([[3, 4, 2], [5, 2, 1]])  # pad = 1
    return {"id": torch.tensor([0, 1]),
            "net_input": {"src_tokens": target, "prev_output_tokens": torch.tensor([[2, 3, 4], [2, 5, 1]])},
            "target": target, "ntokens": 5}


def test_missing_teacher_fails_a_training_step_but_evaluation_skips_kd(tmp_path):
    """fairseq-validate on a student must not need the teacher file its checkpoint names."""
    from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss

    from fairseq_plugin.errors import LskdPluginError

    criterion = LskdCriterion(_PadTask(), sentence_avg=False, teacher_path=str(tmp_path / "absent.pt"),
                              label_smoothing=0.1, kd_temperature=2.0)
    torch.manual_seed(0)
    model, sample = _TinyDecoderModel(), _tiny_sample()
    criterion.eval()  # what fairseq-validate does
    loss, size, log = criterion(model, sample)
    lprobs = torch.log_softmax(model(**sample["net_input"])[0], dim=-1)
    expected, nll = label_smoothed_nll_loss(lprobs.view(-1, 6), sample["target"].view(-1), 0.1, ignore_index=1)
    assert size == 5 and "kd_loss" not in log
    assert torch.allclose(loss, expected, rtol=1e-6) and torch.allclose(log["nll_loss"], nll, rtol=1e-6)
    criterion.train()  # what fairseq's trainer does before every training step
    with pytest.raises(FileNotFoundError, match="teacher checkpoint not found: .*absent.pt") as info:
        criterion(model, sample)
    assert isinstance(info.value, LskdPluginError)


def test_criterion_without_teacher_is_allowed_at_beta_zero():
    criterion = LskdCriterion(_NoDictTask(), sentence_avg=False, kd_beta=0.0, label_smoothing=0.1)
    assert criterion.teacher_paths == () and list(criterion.parameters()) == []


# ---------------------------------------------------------------- autoload ---------------------
def _fake_packages(root: Path) -> None:
    """Stand-ins: `fairseq` marks when its __init__ finished; the plugin records what it saw."""
    (root / "fairseq").mkdir()
    (root / "fairseq" / "__init__.py").write_text(
        "import sys\nINIT_DONE = False\nimport fairseq.criterions\nINIT_DONE = True\n"
    )
    (root / "fairseq" / "criterions.py").write_text("REGISTRY = {}\n")
    (root / "fairseq_plugin").mkdir()
    (root / "fairseq_plugin" / "__init__.py").write_text(
        "import fairseq, fairseq.criterions\n"
        "SAW_INIT_DONE = fairseq.INIT_DONE\n"
        "fairseq.criterions.REGISTRY['ls_kd'] = 'plugin'\n"
    )


def _python(code: str, env_extra: dict, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LSKD_FAIRSEQ_AUTOLOAD")}
    env.update(env_extra)
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip()


def _site_with_hook(tmp_path: Path) -> dict:
    """A site dir holding the .pth, processed at every start-up via sitecustomize on PYTHONPATH
    (the same site.addsitedir code path that reads the real site-packages)."""
    site_dir, boot, pkgs = tmp_path / "site", tmp_path / "boot", tmp_path / "pkgs"
    for directory in (site_dir, boot, pkgs):
        directory.mkdir()
    autoload.install_pth(str(site_dir))
    (boot / "sitecustomize.py").write_text(f"import site\nsite.addsitedir({str(site_dir)!r})\n")
    _fake_packages(pkgs)
    return {"PYTHONPATH": os.pathsep.join([str(boot), str(pkgs)])}


def test_pth_hook_imports_plugin_after_fairseq_and_nothing_else(tmp_path):
    env = _site_with_hook(tmp_path)
    out = _python(
        "import sys, json\n"
        "before = sorted(m for m in ('torch', 'fairseq', 'fairseq_plugin', 'lskd_core') if m in sys.modules)\n"
        "import fairseq\n"
        "import fairseq_plugin\n"
        "print(json.dumps([before, fairseq_plugin.SAW_INIT_DONE, fairseq.criterions.REGISTRY]))",
        env, tmp_path,
    )
    assert out == '[[], true, {"ls_kd": "plugin"}]'


def test_pth_hook_can_be_disabled(tmp_path):
    env = _site_with_hook(tmp_path)
    env["LSKD_FAIRSEQ_AUTOLOAD"] = "0"
    out = _python("import sys, fairseq\nprint('fairseq_plugin' in sys.modules)", env, tmp_path)
    assert out == "False"


def test_pth_hook_reaches_spawned_workers(tmp_path):
    env = _site_with_hook(tmp_path)
    code = textwrap.dedent("""\
        import multiprocessing as mp
        def child(q):
            import sys, fairseq
            q.put(fairseq.criterions.REGISTRY.get('ls_kd'))
        if __name__ == '__main__':
            ctx = mp.get_context('spawn')
            q = ctx.Queue()
            p = ctx.Process(target=child, args=(q,))
            p.start(); print(q.get(timeout=60)); p.join()
        """)
    script = tmp_path / "spawn_check.py"
    script.write_text(code)
    env_all = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LSKD_FAIRSEQ_AUTOLOAD")}
    env_all.update(env)
    proc = subprocess.run([sys.executable, str(script)], env=env_all, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "plugin"


def test_pth_hook_survives_a_broken_plugin(tmp_path):
    env = _site_with_hook(tmp_path)
    plugin = Path(env["PYTHONPATH"].split(os.pathsep)[1]) / "fairseq_plugin" / "__init__.py"
    plugin.write_text("raise RuntimeError('boom')\n")
    out = _python(
        "import warnings\nwith warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n    import fairseq\n"
        "print(fairseq.INIT_DONE, any('lskd autoload' in str(x.message) for x in w))",
        env, tmp_path,
    )
    assert out == "True True"


def test_install_and_uninstall_pth(tmp_path):
    path = autoload.install_pth(str(tmp_path))
    assert path.read_text().startswith("import sys; exec(") and path.read_text().count("\n") == 1
    assert autoload.uninstall_pth(str(tmp_path)) and not path.exists()
    assert not autoload.uninstall_pth(str(tmp_path))
    with pytest.raises(ValueError, match="site_dir must be an existing directory"):
        autoload.install_pth(str(tmp_path / "missing"))


# ---------------------------------------------------------------- IWSLT recipe ------------------
def test_prepare_iwslt_on_a_synthetic_archive(tmp_path):
    """The IWSLT'14 text pipeline on a made-up archive with the real layout (tags, XML segments)."""
    from fairseq_plugin.prepare_iwslt import prepare_iwslt, read_train_tags, read_xml_segments

    orig = tmp_path / "de-en"
    orig.mkdir()
    en = [f"this is talk sentence number {i} about houses and trees ." for i in range(60)]
    de = [f"das ist vortragssatz nummer {i} über häuser und bäume ." for i in range(60)]
    meta = "<url>http://example.org/talk</url>\n<talkid>1</talkid>\n<keywords>a, b</keywords>\n"
    for lang, lines in (("en", en), ("de", de)):
        (orig / f"train.tags.de-en.{lang}").write_text(
            meta + "<title>Title &amp; more</title>\n" + "\n".join(lines) + "\n", encoding="utf-8")
        segs = "".join(f'<seg id="{i}"> {line} </seg>\n' for i, line in enumerate(lines[:7]))
        (orig / f"IWSLT14.TED.tst2010.de-en.{lang}.xml").write_text(
            f'<mteval><srcset><doc docid="1">\n{segs}</doc></srcset></mteval>\n', encoding="utf-8")
    assert read_train_tags(str(orig / "train.tags.de-en.en"))[0] == "Title & more"
    assert read_xml_segments(str(orig / "IWSLT14.TED.tst2010.de-en.de.xml"))[2] == de[2]
    summary = prepare_iwslt("en-de", str(orig), str(tmp_path / "out"), bpe_size=30, workers=1)
    assert summary["sizes"]["test"] == 7
    assert summary["sizes"]["valid"] == 3 and summary["sizes"]["train"] == 58  # every 23rd pair held out
    assert (tmp_path / "out" / "bin" / "dict.de.txt").exists()
    assert (tmp_path / "out" / "raw" / "test.de").read_text(encoding="utf-8").splitlines()[0] == de[0]
    with pytest.raises(FileNotFoundError, match="extracted IWSLT'14 en-ru archive"):
        prepare_iwslt("en-ru", str(orig), str(tmp_path / "ru"))


def test_pth_hook_is_silent_when_lskd_is_gone(tmp_path):
    env = _site_with_hook(tmp_path)
    boot, pkgs = env["PYTHONPATH"].split(os.pathsep)
    for path in (Path(pkgs) / "fairseq_plugin").iterdir():
        path.unlink()
    (Path(pkgs) / "fairseq_plugin").rmdir()
    # -S: no site-packages at all (an installed lskd must not count), the .pth dir added by hand.
    code = (f"import site, sys, warnings\nsite.addsitedir({str(tmp_path / 'site')!r})\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n    import fairseq\n"
            "print(fairseq.INIT_DONE, [str(x.message) for x in w if 'lskd' in str(x.message)])")
    proc = subprocess.run([sys.executable, "-S", "-c", code], env={"PYTHONPATH": pkgs}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "True []"


# ---------------------------------------------------------------- registry guard ----------------
def test_second_import_under_another_name_keeps_one_registration(tmp_path):
    import importlib

    from fairseq.criterions import CRITERION_REGISTRY

    from fairseq_plugin.criterions import ls_kd

    (tmp_path / "lskd_alias").symlink_to(REPO, target_is_directory=True)
    sys.path.insert(0, str(tmp_path))
    try:
        alias = importlib.import_module("lskd_alias.fairseq_plugin.criterions.ls_kd")
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.startswith("lskd_alias")]:
            del sys.modules[name]
    assert alias.__name__ != ls_kd.__name__
    assert alias.LskdCriterion is CRITERION_REGISTRY["ls_kd"] is ls_kd.LskdCriterion


def test_foreign_criterion_named_ls_kd_is_a_reported_conflict():
    from fairseq.criterions import FairseqCriterion

    from fairseq_plugin.criterions import ls_kd

    class SomebodyElsesCriterion(FairseqCriterion):
        pass

    with pytest.raises(ImportError, match="'ls_kd' is already registered by .*LskdCriterion"):
        ls_kd._register(SomebodyElsesCriterion)


# ---------------------------------------------------------------- logging terms / cache rows ---
def test_logged_ce_and_nll_equal_fairseqs_label_smoothed_nll_loss():
    from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss

    from fairseq_plugin.criterions.ls_kd import logged_ce_and_nll

    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 5, 11, generator=gen) * 4
    target = torch.randint(2, 11, (3, 5), generator=gen)
    target[1, 3:] = 1  # padding
    lprobs = torch.log_softmax(logits.double(), dim=-1).view(-1, 11)
    loss, nll = label_smoothed_nll_loss(lprobs, target.view(-1), 0.1, ignore_index=1)
    ce, nll_ours = logged_ce_and_nll(logits, target, target.ne(1), 0.1)
    assert torch.allclose(ce.double(), loss, rtol=1e-6) and torch.allclose(nll_ours.double(), nll, rtol=1e-6)


class _RowIdCache:
    """Stands in for lskd_core's TeacherCache: row r's logits are [r, r, r]."""

    root = "fake"

    def teacher_logits_at(self, rows, temperature):
        return torch.as_tensor(rows, dtype=torch.float32)[:, None].expand(-1, 3).clone()


def test_cached_rows_follow_sample_ids_for_right_and_left_padding():
    import numpy as np

    from fairseq_plugin.teacher_cache import TranslationTeacherCache, row_offsets

    offsets = row_offsets([2, 3, 1])  # sample 0: rows 0-1, sample 1: rows 2-4, sample 2: row 5
    reader = TranslationTeacherCache(_RowIdCache(), offsets, pad=1)
    right = {"id": torch.tensor([2, 1]), "target": torch.tensor([[7, 1, 1], [7, 8, 9]])}
    left = {"id": torch.tensor([0, 1]), "target": torch.tensor([[1, 7, 8], [7, 8, 9]])}
    for sample, expected in ((right, [[5, None, None], [2, 3, 4]]), (left, [[None, 0, 1], [2, 3, 4]])):
        z = reader.logits_for_sample(sample, 1.0, torch.device("cpu"))
        assert z.shape == (2, 3, 3)
        for b, row in enumerate(expected):
            for pos, want in enumerate(row):
                if want is not None:
                    assert torch.equal(z[b, pos], torch.full((3,), float(want)))
    from lskd_core.teacher_cache import CacheMismatch

    with pytest.raises(CacheMismatch, match="sample 1 has 2 target tokens in this batch but 3 rows"):
        reader.logits_for_sample({"id": torch.tensor([1]), "target": torch.tensor([[7, 8]])}, 1.0, "cpu")
    with pytest.raises(CacheMismatch, match="outside the teacher cache"):
        reader.logits_for_sample({"id": torch.tensor([3]), "target": torch.tensor([[7]])}, 1.0, "cpu")
    assert np.array_equal(offsets, [0, 2, 5, 6])
