"""The core (``server/core/``) compiled with mypyc, when it can be.

``pip install .`` builds the compiled modules; the pure-Python ones are installed as
well and are what runs when the build was pure: with ``FENLIU_PURE=1`` at build time,
for editable installs unless ``FENLIU_COMPILE=1`` (``build_backend/fenliu_build.py``),
without mypy, or without a C compiler (the extensions are optional: a failed compile is
a warning). ``fenliu.server.core.COMPILED`` says which one was imported.

Left interpreted: ``types.py`` (mypyc drops msgspec Struct class keywords such as
``tag=`` and ``frozen``: python/mypy#21938), ``image.py`` (msgspec Structs too; not the
hot path) and ``errors.py`` (exceptions: nothing hot). Compiled with the core, from outside
it: ``server/rpc/wire.py``, the wire codec of Route and RouteBatch.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
import warnings
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
CORE = HERE / "server" / "core"
COMPILED = ["dispatcher", "shard", "shop", "shop_heap", "state", "stats", "validate"]
# Outside the core, compiled with it: the wire codec of Route and RouteBatch
# (server/rpc/wire.py), which the service uses only compiled (interpreted it is slower
# than upb).
WIRE = HERE / "server" / "rpc" / "wire.py"
# Commands that build code; metadata steps (egg_info, dist_info) never run mypyc.
_BUILDS = {"build", "build_ext", "bdist_wheel", "editable_wheel", "install", "develop"}


def _pure_reason() -> str:
    if os.environ.get("FENLIU_PURE", "") not in ("", "0"):
        return "FENLIU_PURE is set"
    if not _BUILDS & set(sys.argv[1:]):
        return "not a build"
    try:
        import mypyc.build  # noqa: F401
    except ImportError:
        return "mypy (mypyc) is not installed"
    compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler})"
    return ""


def _extensions() -> list:
    reason = _pure_reason()
    if reason:
        if reason != "not a build":
            warnings.warn(f"fenliu: pure-Python core ({reason})", stacklevel=1)
        return []
    from mypyc.build import mypycify

    # mypy names modules by their place under a package root: stage the core as
    # fenliu/server/core/ (the sources are installed as fenliu.server via package-dir).
    stage = HERE / "build" / "mypyc-src"
    shutil.rmtree(stage, ignore_errors=True)
    package = stage / "fenliu" / "server" / "core"
    package.mkdir(parents=True)
    (stage / "fenliu" / "__init__.py").write_text("")
    (stage / "fenliu" / "server" / "__init__.py").write_text("")
    for source in CORE.glob("*.py"):
        shutil.copyfile(source, package / source.name)
    rpc = stage / "fenliu" / "server" / "rpc"
    rpc.mkdir()
    (rpc / "__init__.py").write_text("")
    shutil.copyfile(WIRE, rpc / WIRE.name)
    config = stage / "mypy.ini"
    config.write_text("[mypy]\nstrict = True\nwarn_unused_ignores = False\n")
    paths = [str(package / f"{name}.py") for name in COMPILED] + [str(rpc / WIRE.name)]
    extensions = mypycify(
        [f"--config-file={config}", *[str(p) for p in package.glob("*.py")], paths[-1]],
        only_compile_paths=paths,
        target_dir=str(HERE / "build" / "mypyc"),
        group_name="fenliu_core",
    )
    for extension in extensions:
        extension.optional = True  # no working compiler: a warning, the pure modules run
    return extensions


setup(ext_modules=_extensions())
