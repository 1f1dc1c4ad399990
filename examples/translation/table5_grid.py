"""The paper's NMT grid (Table 5 En->De, Table B.2 En->Ru): alpha in {0, 0.1} x T in {1, 2, 3, 64}.

For each alpha a Transformer teacher is trained with fairseq's ``label_smoothed_cross_entropy``
(``--label-smoothing alpha``); for each T a Transformer student of the same architecture is
distilled from it with ``--criterion ls_kd --kd-temperature T`` (beta = 1, the paper's setting).
Every model is decoded with beam 5 on the test set and scored with ``fairseq_plugin.bleu``
(detokenised sacreBLEU and the tokenised IWSLT-style BLEU). Results go to ``OUT/results.json`` and
``OUT/table5.md`` (laid out like Table 5). Finished runs (``bleu.json`` present) are skipped, so
an interrupted grid resumes.

Presets:
* ``gpu``: IWSLT'14 (``prepare-iwslt14.sh``), ``transformer_iwslt_de_en``, the paper's App. A
  recipe: Adam (0.9, 0.98), lr 5e-4, inverse_sqrt with 4000 warm-up updates, dropout 0.3,
  weight decay 0, max-tokens 4096, ``--share-decoder-input-output-embed``, fp16, best
  checkpoint by validation BLEU.
* ``cpu``: the offline Debian corpus (``python -m fairseq_plugin.prepare_offline``) with a 1-layer,
  64-dim transformer and a few hundred updates per model: a miniature that runs the same grid on
  2 CPU cores. Its BLEU scores are tiny and not comparable to the paper's.

    python examples/translation/table5_grid.py --data DATA --out runs/table5 --preset gpu|cpu
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[2]

PRESETS: Dict[str, Dict] = {
    "gpu": {
        "arch": ["--arch", "transformer_iwslt_de_en", "--share-decoder-input-output-embed"],
        "train": ["--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--clip-norm", "0.0", "--lr", "5e-4",
                  "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "4000", "--dropout", "0.3",
                  "--weight-decay", "0.0", "--max-tokens", "4096", "--fp16", "--log-format", "json",
                  "--log-interval", "100", "--no-epoch-checkpoints",
                  "--eval-bleu", "--eval-bleu-args", '{"beam": 5, "max_len_a": 1.2, "max_len_b": 10}',
                  "--eval-bleu-detok", "moses", "--eval-bleu-remove-bpe",
                  "--best-checkpoint-metric", "bleu", "--maximize-best-checkpoint-metric"],
        "teacher_updates": 50000, "student_updates": 50000, "checkpoint": "checkpoint_best.pt",
        "generate": ["--batch-size", "128"], "env": {},
    },
    "cpu": {
        "arch": ["--arch", "transformer", "--encoder-layers", "1", "--decoder-layers", "1",
                 "--encoder-embed-dim", "64", "--decoder-embed-dim", "64", "--encoder-ffn-embed-dim", "128",
                 "--decoder-ffn-embed-dim", "128", "--encoder-attention-heads", "2",
                 "--decoder-attention-heads", "2", "--share-all-embeddings"],
        "train": ["--cpu", "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--lr", "5e-3",
                  "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "40", "--dropout", "0.1",
                  "--max-tokens", "1024", "--log-format", "json", "--log-interval", "100", "--num-workers", "0",
                  "--no-epoch-checkpoints", "--disable-validation", "--data-buffer-size", "0"],
        "teacher_updates": 600, "student_updates": 400, "checkpoint": "checkpoint_last.pt",
        "generate": ["--cpu", "--batch-size", "64", "--data-buffer-size", "0"], "env": {"OMP_NUM_THREADS": "1"},
    },
}


def plugin_dir() -> str:
    """The installed/importable fairseq_plugin folder (found without importing fairseq)."""
    spec = importlib.util.find_spec("fairseq_plugin")
    if spec is None or not spec.submodule_search_locations:
        return str(REPO / "fairseq_plugin")
    return list(spec.submodule_search_locations)[0]


def _run(cmd: List[str], log: Path, env: Dict[str, str], dry_run: bool) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    if dry_run:
        return
    with open(log, "w", encoding="utf-8") as handle:
        proc = subprocess.run([str(c) for c in cmd], stdout=handle, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}); see {log}")


def train_and_score(run_dir: Path, train_args: List, preset: Dict, data: Path, lang: str, env, dry_run: bool) -> Optional[Dict]:
    """Train one model (unless done), decode the test set with beam 5, score BLEU."""
    result_file = run_dir / "bleu.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "fairseq_cli.train", data / "bin", "--save-dir", run_dir] + train_args,
         run_dir / "train.log", env, dry_run)
    gen = [sys.executable, "-m", "fairseq_cli.generate", data / "bin", "--user-dir", plugin_dir(),
           "--path", run_dir / preset["checkpoint"], "--gen-subset", "test", "--beam", "5", "--remove-bpe",
           # fairseq drops a last batch smaller than --required-batch-size-multiple (default 8)
           "--required-batch-size-multiple", "1"] + preset["generate"]
    _run(gen, run_dir / "generate.out", env, dry_run)
    if dry_run:
        return None
    from fairseq_plugin.bleu import score

    lines = (run_dir / "generate.out").read_text(encoding="utf-8").splitlines()
    ref_path = data / "raw" / f"test.{lang}"
    refs = ref_path.read_text(encoding="utf-8").splitlines() if ref_path.exists() else None
    result = score(lines, lang, references=refs, lowercase=True)
    tmp = result_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(result) + "\n")
    os.replace(tmp, result_file)
    return result


def table_markdown(results: Dict, alphas: Sequence[float], temperatures: Sequence[float], key: str) -> str:
    """Table 5's layout: a teacher row, then one student row per T; one column per alpha."""
    head = "| | " + " | ".join(f"alpha = {a:g}" for a in alphas) + " |"
    rows = [head, "|---|" + "---|" * len(alphas)]

    def cell(entry):
        return f"{entry[key]:.3f}" if entry else "-"

    rows.append("| Teacher | " + " | ".join(cell(results["teachers"].get(f"{a:g}")) for a in alphas) + " |")
    for t in temperatures:
        rows.append(f"| Student T = {t:g} | " + " | ".join(
            cell(results["students"].get(f"{a:g}", {}).get(f"{t:g}")) for a in alphas) + " |")
    return "\n".join(rows) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="alpha x T grid of Table 5 / Table B.2 with fairseq + ls_kd")
    parser.add_argument("--data", required=True, help="prepared dir holding bin/ and raw/ (prepare-iwslt14.sh or prepare_offline)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--preset", choices=sorted(PRESETS), required=True)
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.1])
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 2.0, 3.0, 64.0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--teacher-updates", type=int, default=None)
    parser.add_argument("--student-updates", type=int, default=None)
    parser.add_argument("--extra", default="", help="extra fairseq-train arguments for every run (one string)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)

    preset = PRESETS[args.preset]
    data, out = Path(args.data), Path(args.out)
    meta_path = data / "prepare.json"
    lang = json.loads(meta_path.read_text())["target"] if meta_path.exists() else "de"
    env = {**os.environ, **preset["env"]}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    base = preset["arch"] + preset["train"] + ["--seed", str(args.seed)] + args.extra.split()
    t_updates = args.teacher_updates or preset["teacher_updates"]
    s_updates = args.student_updates or preset["student_updates"]
    results: Dict = {"preset": args.preset, "data": str(data), "teachers": {}, "students": {}}
    for alpha in args.alphas:
        teacher_dir = out / f"teacher_a{alpha:g}"
        results["teachers"][f"{alpha:g}"] = train_and_score(
            teacher_dir, base + ["--criterion", "label_smoothed_cross_entropy", "--label-smoothing", str(alpha),
                                 "--max-update", str(t_updates)], preset, data, lang, env, args.dry_run)
        for temperature in args.temperatures:
            student_dir = out / f"student_a{alpha:g}_T{temperature:g}"
            results["students"].setdefault(f"{alpha:g}", {})[f"{temperature:g}"] = train_and_score(
                student_dir, base + ["--user-dir", plugin_dir(), "--criterion", "ls_kd",
                                     "--teacher-path", str(teacher_dir / preset["checkpoint"]),
                                     "--kd-temperature", str(temperature), "--kd-beta", "1.0",
                                     "--max-update", str(s_updates)], preset, data, lang, env, args.dry_run)
    if args.dry_run:
        return 0
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, out / "results.json")
    table = ("BLEU, detokenised sacreBLEU\n\n" + table_markdown(results, args.alphas, args.temperatures, "bleu_detok")
             + "\nBLEU, tokenised (IWSLT-style)\n\n" + table_markdown(results, args.alphas, args.temperatures, "bleu_tok"))
    (out / "table5.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
