"""The package's shape (README, Architecture): five layers, a module importing only from its own layer or
the ones below, so there is no import circle; imports inside functions only for heavy optional pieces."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {
    1: "errors io options progress timing machine distributed rundir",
    2: "config model tokenizer hub weights checkpoints masks cost surgery data metrics kernels",
    3: "evaluation training distill latency budget teachers inputs harness benchmark export",
    4: "posttrain cofi",
    5: "methods api parser summaries cli",
}
LAYER = {name: n for n, names in LAYERS.items() for name in names.split()}
# what may be imported inside a function: heavy or optional, and only needed on some paths
HEAVY = ("triton", "onnx", "onnxruntime", "prunekit.export", "prunekit.kernels", "datasets", "huggingface_hub",
         "transformers", "ctypes", "importlib", "matplotlib")
NOT_CHECKED_INSIDE = {"benchmark.py"}  # bench's timing helpers (their own engineer's file)


def modules():
    """(path, top-level module name in the prunekit namespace) of every source file."""
    for path in sorted((ROOT / "prunekit").rglob("*.py")):
        parts = path.relative_to(ROOT / "prunekit").with_suffix("").parts
        yield path, parts[0], len(parts) > 1
    for folder in ("export", "kernels"):
        for path in sorted((ROOT / folder).glob("*.py")):
            yield path, folder, True


def imported(node, top: str, in_subpackage: bool) -> list[str]:
    """The prunekit top-level modules an import statement reads."""
    if isinstance(node, ast.Import):
        return [a.name.split(".")[1] for a in node.names if a.name.startswith("prunekit.")]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level == 0:
        parts = (node.module or "").split(".")
        return [parts[1]] if parts[0] == "prunekit" and len(parts) > 1 else []
    if node.level == 1 and in_subpackage:
        return [top]
    if node.module:
        return [node.module.split(".")[0]]
    return [a.name for a in node.names]


def test_every_module_has_a_layer():
    missing = {top for _, top, _ in modules() if top not in LAYER and top != "__init__"}
    assert not missing, f"modules without a layer in the README's table: {missing}"


def test_no_module_imports_from_a_higher_layer():
    upward = []
    for path, top, sub in modules():
        if top == "__init__":
            continue
        for node in ast.parse(path.read_text()).body:
            for name in imported(node, top, sub):
                if LAYER.get(name, 0) > LAYER[top]:
                    upward.append(f"{path.relative_to(ROOT)} (layer {LAYER[top]}) imports {name} "
                                  f"(layer {LAYER[name]})")
    assert not upward, "\n".join(upward)


def test_imports_inside_functions_are_only_for_heavy_optional_pieces():
    light = []
    for path in sorted((ROOT / "prunekit").rglob("*.py")):
        if path.name in NOT_CHECKED_INSIDE:
            continue
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else
                         ["." + (node.module or "")] if isinstance(node, ast.ImportFrom) else [])
                light += [f"{path.relative_to(ROOT)}:{node.lineno} {fn.name}: {n}" for n in names
                          if not n.startswith(HEAVY)]
    assert not light, "\n".join(light)
