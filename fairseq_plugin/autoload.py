"""Autoload: plain ``fairseq-train --criterion ls_kd`` without ``--user-dir`` once lskd is installed.

fairseq has no entry-point discovery: it imports nothing outside itself unless ``--user-dir`` is
given. This module writes a ``.pth`` file into a site-packages directory; Python runs such a file's
``import`` line at every start-up (including the workers that ``torch.multiprocessing.spawn``
starts for distributed training, which run ``site`` like any interpreter). The line installs a
tiny import hook (a ``sys.meta_path`` finder, standard library only) that does nothing until the
package ``fairseq`` is imported; right after ``fairseq/__init__.py`` has finished executing, the
hook imports ``fairseq_plugin``, which registers ``ls_kd`` and the checkpoint allow-list.

Guarantees:
* programs that never import fairseq never import torch, fairseq or lskd because of it (the hook
  only compares module names); the start-up cost is compiling a ~40-line function once;
* a failing plugin import only warns: fairseq itself keeps working; a ``.pth`` left behind after
  lskd was uninstalled does nothing (``fairseq_plugin`` not found is silent);
* ``LSKD_FAIRSEQ_AUTOLOAD=0`` in the environment disables it;
* ``--user-dir`` pointing at the same installed ``fairseq_plugin`` folder still works (fairseq
  logs "has already been imported"); pointing it at a *different copy* of ``fairseq_plugin``
  makes fairseq refuse the duplicate module name, so use one or the other.

Install / remove (the venv's site-packages by default)::

    python -m fairseq_plugin.autoload install [--site-dir DIR]
    python -m fairseq_plugin.autoload uninstall [--site-dir DIR]

This file uses the standard library only, so ``setup.py`` can load it by path
(``runpy.run_path``) to generate the ``.pth`` at build time without importing fairseq.
"""

import argparse
import os
import sys
import sysconfig
from pathlib import Path
from typing import Optional, Sequence

PTH_NAME = "lskd_fairseq_autoload.pth"
ENV_SWITCH = "LSKD_FAIRSEQ_AUTOLOAD"

# Executed by site.py at interpreter start-up (via the .pth line, in a fresh namespace).
HOOK_SOURCE = '''
def _install():
    import os, sys
    if os.environ.get("LSKD_FAIRSEQ_AUTOLOAD", "1").strip().lower() in ("0", "false", "no", "off"):
        return
    if any(getattr(f, "_lskd_fairseq_autoload", False) for f in sys.meta_path):
        return

    class LskdFairseqAutoload:
        """Imports lskd's fairseq_plugin right after the package `fairseq` finished importing."""

        _lskd_fairseq_autoload = True
        _searching = False

        @classmethod
        def find_spec(cls, name, path=None, target=None):
            if name != "fairseq" or cls._searching:
                return None
            import importlib.util
            cls._searching = True
            try:
                spec = importlib.util.find_spec(name)
            finally:
                cls._searching = False
            loader = getattr(spec, "loader", None)
            if loader is None or not hasattr(loader, "exec_module"):
                return spec
            run_fairseq_init = loader.exec_module

            def exec_module(module):
                run_fairseq_init(module)
                cls.load_plugin()

            loader.exec_module = exec_module
            return spec

        @staticmethod
        def load_plugin():
            try:
                import importlib
                importlib.import_module("fairseq_plugin")
            except ModuleNotFoundError as error:
                if error.name != "fairseq_plugin":
                    import warnings
                    warnings.warn("lskd autoload: could not import fairseq_plugin (%r)" % (error,), RuntimeWarning)
                # else: lskd was uninstalled but this .pth stayed behind: stay silent
            except Exception as error:
                import warnings
                warnings.warn(
                    "lskd autoload: could not import fairseq_plugin (%r); pass --user-dir, or set "
                    "LSKD_FAIRSEQ_AUTOLOAD=0 to silence this" % (error,), RuntimeWarning)

    sys.meta_path.insert(0, LskdFairseqAutoload)


try:
    _install()
except Exception:
    pass
'''


def pth_line() -> str:
    """The single line of the ``.pth`` file (site.py executes lines that start with ``import``)."""
    return f"import sys; exec({HOOK_SOURCE!r}, {{'__name__': '_lskd_fairseq_autoload'}})"


def default_site_dir() -> str:
    """This interpreter's (venv's) pure-Python site-packages."""
    return sysconfig.get_paths()["purelib"]


def install_pth(site_dir: Optional[str] = None) -> Path:
    """Write ``lskd_fairseq_autoload.pth`` into ``site_dir`` (atomically); returns its path."""
    directory = Path(site_dir or default_site_dir())
    if not directory.is_dir():
        raise ValueError(f"site_dir must be an existing directory, got {str(directory)!r}")
    target = directory / PTH_NAME
    tmp = directory / (PTH_NAME + ".tmp")
    tmp.write_text(pth_line() + "\n", encoding="utf-8")
    os.replace(tmp, target)
    return target


def uninstall_pth(site_dir: Optional[str] = None) -> bool:
    """Remove the ``.pth`` file; returns whether there was one."""
    target = Path(site_dir or default_site_dir()) / PTH_NAME
    if target.exists():
        target.unlink()
        return True
    return False


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fairseq_plugin.autoload",
        description="Install/remove the hook that loads lskd's fairseq plugin whenever fairseq is imported.",
    )
    parser.add_argument("action", choices=("install", "uninstall", "show"))
    parser.add_argument("--site-dir", default=None, help="site-packages directory (default: this interpreter's)")
    args = parser.parse_args(argv)
    try:
        if args.action == "install":
            print(f"installed {install_pth(args.site_dir)}")
        elif args.action == "uninstall":
            removed = uninstall_pth(args.site_dir)
            print("removed" if removed else "nothing to remove", Path(args.site_dir or default_site_dir()) / PTH_NAME)
        else:
            print(pth_line())
    except (ValueError, OSError) as error:  # standard library only here: no fairseq_plugin.errors
        where = getattr(error, "filename", None) or args.site_dir or default_site_dir()
        reason = getattr(error, "strerror", None) or str(error)
        print(f"autoload: error: {where}: {reason} (pass --site-dir with a writable site-packages "
              f"directory)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
