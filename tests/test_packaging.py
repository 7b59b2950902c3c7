"""Packaging: handlers/ and models/ install inside ppl_mech, editable and as a wheel."""

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {"ppl_mech." + ".".join(p.parent.relative_to(ROOT / "ppl_mech").parts)
             for p in (ROOT / "ppl_mech").rglob("__init__.py")}
    found = {f.rstrip(".") for f in found} | {"ppl_mech.handlers", "ppl_mech.models"}
    assert found <= listed, f"add to pyproject packages: {sorted(found - listed)}"


def test_editable_install_imports_subpackages_from_the_repo():
    import ppl_mech.handlers
    import ppl_mech.models

    assert Path(ppl_mech.handlers.__file__).parent == ROOT / "handlers"
    assert Path(ppl_mech.models.__file__).parent == ROOT / "models"


@pytest.mark.skipif(os.environ.get("PPL_MECH_SKIP_WHEEL") == "1", reason="wheel build disabled")
def test_wheel_has_no_top_level_handlers_or_models(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    wheel = next(tmp_path.glob("ppl_mech-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"ppl_mech"}, tops
    assert "ppl_mech/handlers/__init__.py" in names and "ppl_mech/models/__init__.py" in names
    # the wheel imports outside the repository
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True)
    probe = subprocess.run(
        [sys.executable, "-c", "import ppl_mech.handlers, ppl_mech.models, ppl_mech; "
         "print(ppl_mech.handlers.__file__)"],
        env=dict(os.environ, PYTHONPATH=str(target)), cwd=tmp_path, capture_output=True, text=True,
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert str(target) in probe.stdout
