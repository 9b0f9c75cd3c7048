"""The layering of docs/architecture.md, checked on the code's own imports (module-level and inside
functions alike): every import of the library goes to its own layer or one below, no two modules
import each other (directly or round a circle), no private name is imported from another file,
and the scripts import the installed package instead of editing ``sys.path``. The old flat import
paths (ADM's ``guided_diffusion.unet``, ...) are compatibility shims of one exact shape, each the very
module at its new path, and none of our own code imports them."""

import ast
import importlib
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = "guided_diffusion"

# Bottom to top. A layer lists its folders (subpackages of the library) and its few modules left at the
# top of the package; a module belongs to the layer whose entry is a prefix of its name. No entry is
# listed twice or inside another (test_every_folder_sits_in_one_layer), so the answer is unique and a
# folder sits in one layer as a whole.
LAYERS = [
    ("math and networks", ["diffusion", "models"]),
    ("runtime", ["runtime"]),
    ("infrastructure", ["pretrained", "data", "image_util", "script_util", "model_config"]),
    ("training and sampling", ["train_util", "sampling", "classifiers"]),
    ("builders", ["experiment"]),
    ("applications", ["evaluation", "dkdm", "continual"]),
    ("launch", ["launch"]),
]


# The old flat import paths -> the module each is now. At each old path lies a shim of one exact shape
# (_alias_of): a docstring, ``import sys``, the new module imported as ``_m``, ``sys.modules[__name__] =
# _m``; so the old name is the same module object (monkeypatching, pickles and isinstance agree). These
# shims, and nothing else, are left out of the layer checks.
SHIMS = {
    "diffusion_math": "diffusion.diffusion_math",
    "gaussian_diffusion": "diffusion.gaussian_diffusion",
    "losses": "diffusion.losses",
    "resample": "diffusion.resample",
    "respace": "diffusion.respace",
    "diffusers_unet": "models.diffusers_unet",
    "dit": "models.dit",
    "energy": "models.energy",
    "lora": "models.lora",
    "nn": "models.nn",
    "prompts": "models.prompts",
    "unet": "models.unet",
    "vae": "models.vae",
    "dist_util": "runtime.dist_util",
    "logger": "runtime.logger",
    "latent": "pretrained.latent",
    "text_encoder": "pretrained.text_encoder",
}
_ALIAS = ast.dump(ast.parse("sys.modules[__name__] = _m").body[0])


def _alias_of(path: str):
    """The module that the shim at ``path`` (a file at the top of the package) makes its own name, or
    None when the file is anything but a shim's exact shape."""
    body = ast.parse(open(path).read()).body
    if len(body) != 4:
        return None
    doc, imp, frm, alias = body
    if not (isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)
            and isinstance(imp, ast.Import) and [(a.name, a.asname) for a in imp.names] == [("sys", None)]
            and isinstance(frm, ast.ImportFrom) and frm.level == 1 and frm.module
            and [a.asname for a in frm.names] == ["_m"] and ast.dump(alias) == _ALIAS):
        return None
    return f"{PKG}.{frm.module}.{frm.names[0].name}"


def _modules():
    out = {}  # dotted name -> file (the package root's own __init__ is left out: it is empty)
    for dirpath, _dirs, files in os.walk(os.path.join(ROOT, PKG)):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = path
    out.pop(PKG, None)
    top = {m: _alias_of(p) for m, p in out.items() if m.count(".") == 1}  # shims lie only at the top
    shims = {m: alias for m, alias in top.items() if alias}
    return {m: p for m, p in out.items() if m not in shims}, shims


MODULES, SHIM_MODULES = _modules()  # the library's modules; the shims (old path -> the module it is)


def _layer(module: str) -> int:
    name = module[len(PKG) + 1:]
    found = [i for i, (_, prefixes) in enumerate(LAYERS) for p in prefixes if name == p or name.startswith(p + ".")]
    if not found:
        raise AssertionError(f"{module} is in no layer of docs/architecture.md: add it to LAYERS and the doc")
    return found[0]


def _imports(module: str, path: str):
    """(imported module, names, line) for every import of ``module``, relative ones resolved."""
    tree = ast.parse(open(path).read())
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [a.name for a in node.names]
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            yield target, [n for n in names if f"{target}.{n}" not in MODULES], node.lineno
            for s in subs:
                yield s, [], node.lineno


def _graph():
    g = {}
    for m, path in MODULES.items():
        g[m] = {(t if t in MODULES else t.rsplit(".", 1)[0], names, line) for t, names, line in
                ((t, tuple(n), line) for t, n, line in _imports(m, path)) if t.startswith(PKG + ".")}
    return g


def test_every_import_goes_to_its_layer_or_below():
    bad = []
    for m, deps in _graph().items():
        for t, _, line in deps:
            if t in MODULES and _layer(t) > _layer(m):
                bad.append(f"{MODULES[m]}:{line}: {m} ({LAYERS[_layer(m)][0]}) imports {t} ({LAYERS[_layer(t)][0]})")
    assert not bad, "imports that go up a layer:\n" + "\n".join(bad)


def test_no_import_cycle():
    g = {m: {t for t, _, _ in deps if t in MODULES and t != m} for m, deps in _graph().items()}
    # A package's __init__ may gather its own submodules; that is not a cycle of concerns.
    g = {m: {t for t in ts if not (t.startswith(m + ".") and MODULES[m].endswith("__init__.py"))} for m, ts in g.items()}
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    assert not cycles, f"modules that import each other: {cycles}"


def test_no_private_name_is_imported_from_another_file():
    bad = []
    files = list(MODULES.items()) + [(f"scripts.{f[:-3]}", os.path.join(ROOT, "scripts", f))
                                     for f in os.listdir(os.path.join(ROOT, "scripts")) if f.endswith(".py")]
    for m, path in files:
        for t, names, line in _imports(m, path):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and t.startswith((PKG, "tools")):
                bad.append(f"{path}:{line}: {', '.join(private)} from {t}")
    assert not bad, "private names imported across files:\n" + "\n".join(bad)


def test_scripts_use_the_installed_package():
    edits = [f for d in ("scripts", "scripts/tools") for f in os.listdir(os.path.join(ROOT, d))
             if f.endswith(".py") and re.search(r"sys\.path\.(insert|append)", open(os.path.join(ROOT, d, f)).read())]
    assert not edits, f"scripts that edit sys.path (install the package: pip install -e .): {edits}"


def test_no_tool_takes_the_name_of_a_script():
    """A script and the tool behind it have different names (``scripts/x.py`` vs ``scripts/tools/x.py``)."""
    scripts = {f[:-3] for f in os.listdir(os.path.join(ROOT, "scripts")) if f.endswith(".py")}
    tools = os.path.join(ROOT, "scripts", "tools")
    names = {f[:-3] if f.endswith(".py") else f for f in os.listdir(tools)
             if f.endswith(".py") or os.path.isfile(os.path.join(tools, f, "__init__.py"))}
    assert not scripts & names, f"tools named as scripts: {sorted(scripts & names)}"

def test_every_folder_sits_in_one_layer():
    """Each entry of LAYERS is a folder or a top-level module of the package, listed once, none inside
    another: so every module's layer is one answer, and a folder's modules share its layer."""
    entries = [p for _, prefixes in LAYERS for p in prefixes]
    assert len(entries) == len(set(entries)), f"entries listed twice: {sorted(p for p in entries if entries.count(p) > 1)}"
    nested = [(a, b) for a in entries for b in entries if a != b and b.startswith(a + ".")]
    assert not nested, f"entries inside another (a folder is in one layer as a whole): {nested}"
    missing = [p for p in entries if f"{PKG}.{p}" not in MODULES]
    assert not missing, f"entries of LAYERS that name no module or folder of {PKG}: {missing}"
    for m in MODULES:
        _layer(m)


def test_the_doc_names_every_layer():
    doc = open(os.path.join(ROOT, "docs", "architecture.md")).read()
    for name, prefixes in LAYERS:
        assert name in doc, f"docs/architecture.md does not describe the layer {name!r}"
        for p in prefixes:
            assert f"`{p}" in doc, f"docs/architecture.md does not place {p!r}"


def test_the_old_paths_are_exactly_the_shims():
    """Every old path holds a shim of the exact shape that aliases its new module, and nothing else has
    that shape (a shim with anything more in it is no shim: it would meet the layer checks, in no layer)."""
    found = {m[len(PKG) + 1:]: a[len(PKG) + 1:] for m, a in SHIM_MODULES.items()}
    assert found == SHIMS, f"shims found {found}, expected {SHIMS}"
    for old, new in SHIMS.items():
        assert f"{PKG}.{new}" in MODULES, f"{old}'s new path {new} is no module of the library"
        doc = ast.get_docstring(ast.parse(open(os.path.join(ROOT, PKG, f"{old}.py")).read()))
        assert f"{PKG}.{new}" in doc, f"{old}.py's docstring should name {PKG}.{new}"


@pytest.mark.parametrize("old", sorted(SHIMS))
def test_each_old_path_is_its_new_module(old):
    """``import guided_diffusion.<old>`` and ``from guided_diffusion import <old>`` give the new module itself."""
    new = importlib.import_module(f"{PKG}.{SHIMS[old]}")
    assert importlib.import_module(f"{PKG}.{old}") is new
    assert sys.modules[f"{PKG}.{old}"] is new
    assert getattr(__import__(PKG, fromlist=[old]), old) is new


def test_adm_imports_work():
    """What a guided-diffusion user writes."""
    from guided_diffusion import dist_util, gaussian_diffusion, logger, nn, respace, script_util, train_util, unet
    import guided_diffusion.models.unet
    import guided_diffusion.unet as u
    from guided_diffusion.unet import UNetModel

    assert u is unet is guided_diffusion.models.unet and UNetModel is guided_diffusion.models.unet.UNetModel
    assert script_util.create_model.__module__ == f"{PKG}.script_util" and train_util.TrainLoop
    assert logger.configure and dist_util.load_state_dict and respace.SpacedDiffusion and nn.timestep_embedding
    assert isinstance(script_util.create_gaussian_diffusion(), gaussian_diffusion.GaussianDiffusion)


def _strings(path: str):
    """(line, text) of every string constant of a file but its docstrings (code run in a child process,
    names handed to importlib or monkeypatch)."""
    tree = ast.parse(open(path).read())
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    for n in ast.walk(tree):
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs:
            yield n.lineno, n.value


def test_our_code_imports_the_new_paths():
    """The shims are for users: the library, the scripts and the tests import the modules where they are
    (imports of every form, and dotted names in strings: code run in a child process, SECTION_OWNERS)."""
    dotted = re.compile(rf"\b{PKG}\.({'|'.join(sorted(SHIMS, key=len, reverse=True))})\b")
    files = dict(MODULES)
    for d in ("scripts", "tests"):
        for dirpath, _dirs, fs in os.walk(os.path.join(ROOT, d)):
            for f in fs:
                if f.endswith(".py"):
                    path = os.path.join(dirpath, f)
                    files[os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")] = path
    files.pop("tests.test_architecture")  # imports the old paths on purpose (test_adm_imports_work)
    bad = []
    for m, path in files.items():
        for t, names, line in _imports(m, path):
            if t in SHIM_MODULES or t.startswith(tuple(s + "." for s in SHIM_MODULES)) or (
                    t == PKG and set(names) & set(SHIMS)):
                bad.append(f"{path}:{line}: imports {t} {names or ''}")
        bad += [f"{path}:{line}: {text!r}" for line, text in _strings(path) if dotted.search(text)]
    assert not bad, "old paths in our code (import the new ones):\n" + "\n".join(bad)
