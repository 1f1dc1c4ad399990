"""The documented patch for torchvision's references/classification/train.py, applied to a script
of the same shape (tests/reference_like_train.py, our own code) and run on FakeData on the CPU.

The hunks are read from the documentation itself (docs/vision.md, else README.md), so the test
checks the text users copy. Cases: a plain run and a ``--mixup-alpha`` run of the patched script
give exactly the unpatched script's losses; KD trains with loss = T^2 KL(p_t(T) || p(T))
(independent float64 formula); ``--resume`` works together with ``--teacher``.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO

SCRIPT = Path(__file__).with_name("reference_like_train.py")
HEADING = re.compile(r"^#+ Using your own copy of torchvision's `references/classification/train.py`", re.M)


def documented_hunks() -> str:
    for doc in (REPO / "docs" / "vision.md", REPO / "README.md"):
        if doc.is_file():
            text = doc.read_text(encoding="utf-8")
            found = HEADING.search(text)
            if found:
                block = re.search(r"```diff\n(.*?)```", text[found.end():], re.S)
                assert block, f"no ```diff block after the torchvision-reference heading in {doc}"
                return block.group(1)
    raise AssertionError("the torchvision-reference patch is documented in neither docs/vision.md nor README.md")


def apply_hunks(source: str, hunks: str) -> str:
    """Apply the doc's elided diff. ``...`` lines split it into chunks; each chunk's context (' ')
    and removed ('-') lines must appear as one contiguous block of the file, searched forward from
    the end of the previous chunk (the hunks follow the file's order); the block is replaced by the
    chunk's context and added ('+') lines. A chunk of '+' lines only is inserted where the previous
    chunk ended (the top of the file for the first)."""
    chunks: list = [[]]
    for raw in hunks.splitlines():
        if not raw.strip():
            continue
        if raw[1:].strip() == "...":
            chunks.append([])
            continue
        assert raw[0] in " +-", f"unexpected diff line {raw!r}"
        chunks[-1].append((raw[0], raw[1:]))
    lines = source.splitlines()
    cursor = 0
    for chunk in (c for c in chunks if c):
        old = [text for mark, text in chunk if mark != "+"]
        new = [text for mark, text in chunk if mark != "-"]
        start = cursor
        if old:
            hits = [i for i in range(cursor, len(lines) - len(old) + 1) if lines[i:i + len(old)] == old]
            assert hits, f"lines {old!r} not found after line {cursor}"
            start = hits[0]
        lines[start:start + len(old)] = new
        cursor = start + len(new)
    return "\n".join(lines) + "\n"


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scripts(tmp_path_factory, _one_thread):
    folder = tmp_path_factory.mktemp("reference")
    patched = folder / "patched_train.py"
    patched.write_text(apply_hunks(SCRIPT.read_text(encoding="utf-8"), documented_hunks()), encoding="utf-8")
    return _load(SCRIPT, "reference_plain"), _load(patched, "reference_patched")


@pytest.fixture(autouse=True)
def _restore_allow_list():
    before = list(torch.serialization.get_safe_globals())
    yield
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(before)


MODEL = "mobilenet_v3_small"  # a small torchvision classifier ending in nn.Linear: seconds on a CPU


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only spin on a shared machine
    yield
    torch.set_num_threads(threads)


def _run(module, out: Path, *argv: str):
    out.mkdir(parents=True, exist_ok=True)
    args = module.get_args_parser().parse_args(["--output-dir", str(out), "--model", MODEL, *argv])
    return module.main(args)


def test_patch_adds_the_kd_flags_and_only_touches_the_training_line(scripts):
    plain, patched = scripts
    text = Path(patched.__file__).read_text()
    assert "add_kd_args(parser)" in text and "from vision_plugin.kd import" in text
    # evaluate() keeps its criterion(output, target) line
    evaluate = text[text.index("def evaluate("):text.index("def load_data(")]
    assert "loss = criterion(output, target)\n" in evaluate
    parsed = patched.get_args_parser().parse_args([])
    assert parsed.teacher is None and parsed.kd_temperature == 1.0


@pytest.mark.parametrize("extra", [[], ["--mixup-alpha", "0.2"], ["--label-smoothing", "0.1"]])
def test_plain_runs_of_the_patched_script_are_unchanged(scripts, tmp_path, extra):
    plain, patched = scripts
    a = _run(plain, tmp_path / "a", *extra)
    b = _run(patched, tmp_path / "b", *extra)
    assert a["losses"] == b["losses"] and a["val_loss"] == b["val_loss"]
    for (ka, va), (kb, vb) in zip(a["model"].state_dict().items(), b["model"].state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka


@pytest.fixture(scope="module")
def teacher_ckpt(scripts, tmp_path_factory):
    """A teacher trained by the (plain) reference-like script: its checkpoint stores args as a Namespace."""
    plain, _ = scripts
    out = tmp_path_factory.mktemp("teacher")
    before = list(torch.serialization.get_safe_globals())
    _run(plain, out, "--epochs", "2", "--seed", "7")
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(before)
    return out / "checkpoint.pth"


def test_kd_loss_is_t2_kl(scripts, tmp_path, teacher_ckpt):
    plain, patched = scripts
    temperature = 2.0
    got = _run(patched, tmp_path / "kd", "--teacher", MODEL, "--teacher-ckpt", str(teacher_ckpt),
               "--kd-temperature", str(temperature), "--seed", "3", "--lr", "0")
    # lr 0: the student never changes, so every step's loss is T^2 KL on that batch, recomputed here
    torch.manual_seed(3)
    import torchvision

    student = torchvision.models.get_model(MODEL, weights=None, num_classes=plain.NUM_CLASSES).train()
    teacher = torchvision.models.get_model(MODEL, weights=None, num_classes=plain.NUM_CLASSES)
    with torch.serialization.safe_globals([argparse.Namespace]):
        teacher.load_state_dict(torch.load(teacher_ckpt, weights_only=True)["model"])
    teacher.eval()
    dataset, _ = plain.load_data(plain.get_args_parser().parse_args([]))
    loader = torch.utils.data.DataLoader(dataset, batch_size=8)
    for step, (image, _target) in enumerate(loader):
        with torch.no_grad():
            s = student(image).double()
            t = teacher(image).double()
        pt = F.softmax(t / temperature, 1)
        kl = (pt * (F.log_softmax(t / temperature, 1) - F.log_softmax(s / temperature, 1))).sum(1).mean()
        assert got["losses"][step] == pytest.approx(temperature**2 * float(kl), rel=1e-4, abs=1e-6)
    assert len(got["losses"]) == step + 1


def test_feature_kd_through_the_patched_script(scripts, tmp_path):
    """--feature-kd overhaul in the patched script (ResNet-18 -> ResNet-18: feature positions are known
    for ResNets): lr 0 keeps the student fixed, so each step's loss is the KD run's plus weight x a
    positive feature loss; the connectors are in the saved model (the wrapper's state)."""
    plain, patched = scripts
    before = list(torch.serialization.get_safe_globals())
    _run(plain, tmp_path / "teacher", "--model", "resnet18", "--seed", "7")
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(before)
    kd = ["--model", "resnet18", "--teacher", "resnet18", "--teacher-ckpt", str(tmp_path / "teacher" / "checkpoint.pth"),
          "--kd-temperature", "2", "--seed", "3"]
    plain_kd = _run(patched, tmp_path / "kd", *kd, "--lr", "0")
    fkd = _run(patched, tmp_path / "fkd", *kd, "--lr", "0", "--feature-kd", "overhaul", "--feature-kd-weight", "1e-3")
    assert len(fkd["losses"]) == len(plain_kd["losses"]) > 0
    assert all(f > k + 1e-6 for f, k in zip(fkd["losses"], plain_kd["losses"]))
    saved = torch.load(tmp_path / "fkd" / "checkpoint.pth", weights_only=True)["model"]
    assert "connectors.0.0.weight" in saved and "student.fc.weight" in saved


def test_resume_with_teacher(scripts, tmp_path, teacher_ckpt):
    _, patched = scripts
    kd = ["--teacher", MODEL, "--teacher-ckpt", str(teacher_ckpt), "--kd-temperature", "2"]
    straight = _run(patched, tmp_path / "straight", *kd, "--epochs", "2")
    _run(patched, tmp_path / "first", *kd, "--epochs", "1")
    resumed = _run(patched, tmp_path / "first", *kd, "--epochs", "2",
                   "--resume", str(tmp_path / "first" / "checkpoint.pth"))
    # before the fix, lskd's teacher load removed the script's own allow-listing of argparse.Namespace
    # and this --resume failed with "Unsupported global: GLOBAL argparse.Namespace"
    assert len(resumed["losses"]) == len(straight["losses"]) // 2 > 0
    assert torch.load(tmp_path / "first" / "checkpoint.pth", weights_only=True)["epoch"] == 1
    # same weights going in, same batches: the resumed epoch's losses are those of the straight run's
    # second epoch up to dropout (the script seeds once, so its dropout masks differ after a resume)
    assert resumed["losses"] == pytest.approx(straight["losses"][len(resumed["losses"]):], rel=0.2)
