"""lskd: should my teacher use label smoothing, and at which temperature should I distil?"""

import runpy
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

here = Path(__file__).parent


class BuildPyWithFairseqAutoload(build_py):
    """Also ship lskd_fairseq_autoload.pth at the top of site-packages, so that plain
    ``fairseq-train --criterion ls_kd`` finds the criterion (see fairseq_plugin/autoload.py)."""

    def run(self):
        super().run()
        autoload = runpy.run_path(str(here / "fairseq_plugin" / "autoload.py"))
        pth = Path(self.build_lib) / autoload["PTH_NAME"]
        pth.write_text(autoload["pth_line"]() + "\n", encoding="utf-8")

setup(
    name="lskd",
    version="0.1.0",
    description=(
        "Label smoothing x knowledge distillation toolkit: KD losses, diffusion index, "
        "projections and alpha x T studies (Chandrasegaran et al., ICML 2022)"
    ),
    long_description=(here / "README.md").read_text(encoding="utf-8") if (here / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["lskd_core", "lskd_core.*", "vision_plugin", "vision_plugin.*",
                                    "fairseq_plugin", "fairseq_plugin.*"]),
    include_package_data=True,
    package_data={"lskd_core": ["data/*.json", "presets/*.json"]},
    install_requires=[
        "torch>=2.0",
        "numpy>=1.22",
        "scipy>=1.8",
        "matplotlib>=3.5",
        "tqdm>=4.60",
    ],
    extras_require={
        "vision": ["torchvision>=0.15", "tensorboard>=2.10"],
        # fairseq-fixed is fairseq 0.12 patched for Python 3.11+; see README for installing it
        # without torchaudio (which translation does not need).
        "fairseq": ["fairseq-fixed>=0.12.3", "sacrebleu>=2.0", "sentencepiece>=0.1.97", "sacremoses",
                    "subword-nmt"],
        "dev": ["pytest>=7", "tensorboard>=2.10"],
    },
    cmdclass={"build_py": BuildPyWithFairseqAutoload},
    entry_points={"console_scripts": ["lskd-eta=lskd_core.eta:main", "lskd-study=lskd_core.study:main"]},
)
