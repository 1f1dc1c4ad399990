"""Metadata lives in pyproject.toml; this file only adds the fairseq autoload hook to the build."""

import runpy
from pathlib import Path

from setuptools import setup
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


setup(cmdclass={"build_py": BuildPyWithFairseqAutoload})
