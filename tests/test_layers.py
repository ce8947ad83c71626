"""The layout's one rule: layers only point down, and a board never loads the workstation side.

    contracts (data every side shares)  <-  config  <-  tflite, media  <-  nodes  <-  cli
                                                                the converter on top of all

and inside nodes three floors: mqtt (the broker connection) <- observe (counting, following,
reporting) <- daemons.

tflite and media, one layer, do not import each other; relative imports and
importlib.import_module of a written-out name count as imports.

Beside the product: tests/ and bench/ use the product and support/ (what both share), never each
other; support/ imports neither; the product imports none of the three. What a benchmark runs
(bench/ outside its own tests, support/) does without pytest.

docs/architecture.md draws it.
"""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

import pytest

from support.paths import REPO

#: package prefix -> layer; a module may import from its own layer and the ones below (the
#: longest prefix that matches a module decides its layer)
LAYERS = {
    "aiotedge.contracts": 0,
    "aiotedge.config": 1,
    "aiotedge.tflite": 2,
    "aiotedge.media": 2,
    "aiotedge.nodes": 3,
    "aiotedge.nodes.mqtt": 3,
    "aiotedge.nodes.observe": 4,
    "aiotedge.nodes.daemons": 5,
    "aiotedge.cli": 6,
    "aiotedge.__main__": 6,
    "aiotedge_converter": 7,
}
#: the package itself holds only the version
ROOT_LAYER = 0


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[0] == "converter":
        parts[0] = "aiotedge_converter"
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int | None:
    """The layer of one of our modules; None for anything else (the standard library...)."""
    matching = [prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")]
    if matching:
        return LAYERS[max(matching, key=len)]
    return ROOT_LAYER if module == "aiotedge" else None


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function: absolute and relative
    imports, and `importlib.import_module` of a name written out."""
    found = set()
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.add(node.args[0].value)
    return found


SOURCES = sorted([*(REPO / "aiotedge").rglob("*.py"), *(REPO / "converter").glob("*.py")])


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_imports_from_a_layer_above_its_own(path):
    own = layer(module_name(path))
    assert own is not None, f"{path} is in no layer: add its package to LAYERS"
    upward = sorted(name for name in imported_modules(path)
                    if (theirs := layer(name)) is not None and theirs > own)
    assert upward == [], f"{module_name(path)} (layer {own}) imports from above: {upward}"


#: packages of one layer that must not import each other: the model's runtime and the camera's
#: pictures meet in the nodes above them (profiling.py imported media from tflite: a cycle)
APART = [("aiotedge.tflite", "aiotedge.media")]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_packages_of_one_layer_that_are_kept_apart_do_not_import_each_other(path):
    own = module_name(path)
    for first, second in APART:
        for mine, theirs in ((first, second), (second, first)):
            if own == mine or own.startswith(mine + "."):
                crossing = sorted(name for name in imported_modules(path)
                                  if name == theirs or name.startswith(theirs + "."))
                assert crossing == [], f"{own} imports {crossing} ({mine} and {theirs} stay apart)"


def test_relative_and_importlib_imports_are_seen():
    """A layering rule that misses `from ..nodes import x` or import_module("...") guards
    nothing; checked on a module written here, placed as aiotedge/media/x.py would be."""
    source = REPO / "aiotedge" / "media" / "probe_for_the_test.py"
    source.write_text("from ..nodes import stage\nfrom . import image\n"
                      "import importlib\nimportlib.import_module('aiotedge.cli')\n")
    try:
        found = imported_modules(source)
    finally:
        source.unlink()
    assert {"aiotedge.nodes", "aiotedge.nodes.stage", "aiotedge.media.image",
            "aiotedge.cli"} <= found


#: the folders beside the product (the root conftest.py holds the fixtures of both test folders)
#: -> which of them it may import; the product (aiotedge, the converter) uses them all and is
#: installed without them, so it may import none of them
BESIDE = {
    "tests": {"tests", "support"},
    "bench": {"bench", "support"},
    "support": {"support"},
    "conftest": {"support"},
    "aiotedge": set(),
    "aiotedge_converter": set(),
}
BESIDE_SOURCES = sorted([*(REPO / "tests").rglob("*.py"), *(REPO / "bench").rglob("*.py"),
                         *(REPO / "support").rglob("*.py"), REPO / "conftest.py"])


def folder(module: str) -> str:
    return module.split(".", maxsplit=1)[0]


@pytest.mark.parametrize("path", [*SOURCES, *BESIDE_SOURCES],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_tests_and_benchmarks_share_support_and_never_import_each_other(path):
    own = folder(module_name(path))
    forbidden = BESIDE.keys() - {"aiotedge", "aiotedge_converter"} - BESIDE[own]
    crossing = sorted(name for name in imported_modules(path) if folder(name) in forbidden)
    allowed = sorted(BESIDE[own]) or "none of tests, bench, support"
    assert crossing == [], f"{module_name(path)} imports {crossing} (it may import {allowed})"


#: what a benchmark runs: bench/ but for its own tests, and support/
WITHOUT_PYTEST = [path for path in BESIDE_SOURCES
                  if folder(module_name(path)) in ("bench", "support")
                  and not module_name(path).startswith("bench.tests")]


@pytest.mark.parametrize("path", WITHOUT_PYTEST, ids=lambda p: str(p.relative_to(REPO)))
def test_what_a_benchmark_runs_does_not_import_pytest(path):
    """A benchmark runs where pytest is not installed; a missing tool is support.unavailable's
    (a skip under pytest, an error otherwise)."""
    assert "pytest" not in {folder(name) for name in imported_modules(path)}


def test_no_modules_import_each_other_in_a_circle():
    """A circle (even one a type checker's import closes) makes two modules one: neither can be
    read, tested or moved without the other. config/files.py once imported the sections that
    read passwords with it."""
    ours = {module_name(path): path for path in [*SOURCES, *BESIDE_SOURCES]}
    graph = {name: {found for found in imported_modules(path) if found in ours and found != name}
             for name, path in ours.items()}
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as circle:
        pytest.fail(f"modules import each other in a circle: {' -> '.join(circle.args[1])}")


#: the one module that speaks to the MQTT client library; the rest see aiotedge.nodes.mqtt.transport
MQTT_CLIENT_MODULE = "aiotedge.nodes.mqtt.session"


def test_only_the_session_module_imports_the_mqtt_client_library():
    """The nodes use the session through its interface and its own message type, so that the
    client library can be changed, or faked in a unit test, in one place."""
    importing = sorted(module_name(path) for path in SOURCES
                       if any(name.split(".")[0] == "paho" for name in imported_modules(path)))
    assert importing == [MQTT_CLIENT_MODULE], f"paho imported outside the session: {importing}"


def test_every_package_is_installed():
    """setup.cfg lists the packages; one left out would be missing from a board's install."""
    listed = (REPO / "setup.cfg").read_text()
    packages = {module_name(init) for init in (REPO / "aiotedge").rglob("__init__.py")}
    assert all(f"    {package}\n" in listed for package in packages), packages


BOARD_SIDE = """
import importlib, pkgutil, sys
import aiotedge
from aiotedge.cli import main
for info in pkgutil.walk_packages(aiotedge.__path__, "aiotedge."):
    if info.name != "aiotedge.__main__":
        importlib.import_module(info.name)
for argv in (["--help"], ["stage", "--help"]):
    try:
        main(argv)
    except SystemExit:
        pass
loaded = sorted(name for name in sys.modules
                if name.split(".")[0] in ("tensorflow", "keras", "aiotedge_converter",
                                          "av", "watchdog", "picamera2"))
print("LOADED", loaded)
"""


def test_the_board_side_loads_neither_tensorflow_nor_the_converter_nor_camera_libraries():
    """The camera's libraries are optional extras, imported when a source needs them."""
    done = subprocess.run([sys.executable, "-c", BOARD_SIDE], capture_output=True, text=True,
                          timeout=120, check=True)
    assert "LOADED []" in done.stdout, done.stdout
    assert "usage: aiotedge stage" in done.stdout


STAGE_DAEMON = """
import sys
from aiotedge.cli import build_parser
import aiotedge.nodes.daemons.stage
build_parser()
print("SCHEMA LOADED", "ai_edge_litert.schema_py_generated" in sys.modules)
"""


def test_a_stage_daemon_does_not_load_the_tflite_schema():
    """The generated flatbuffer schema (about 6 MB resident) cuts and profiles models; a board
    serving its segment never needs it, and a Pi's memory is the daemon's budget."""
    done = subprocess.run([sys.executable, "-c", STAGE_DAEMON], capture_output=True, text=True,
                          timeout=120, check=True)
    assert "SCHEMA LOADED False" in done.stdout, done.stdout
