"""The package's floors (docs/design.md, "Layout"): every module sits on one, imports only the floors below it that
the table allows, and no import circle exists, imports inside functions counted. Read from the source with ast, so
nothing is imported."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("lightning_gpt", "data_modules", "callbacks")

# floor: the module prefixes on it (a module is on the floor of its longest matching prefix).
FLOORS = {
    "ground": ("lightning_gpt",),
    "retrieval": ("lightning_gpt.retrieval",),
    "data": ("data_modules",),
    "training": ("lightning_gpt.training",),
    "loading": ("lightning_gpt.loading",),
    "evaluation": ("lightning_gpt.evaluation",),
    "callbacks": ("callbacks",),
    "serving": ("lightning_gpt.serving",),
    "commands": ("lightning_gpt.commands",),
    "entry": ("lightning_gpt.cli", "lightning_gpt.__main__"),
}
# floor: the floors it may import (besides its own).
MAY_IMPORT = {
    "ground": set(),
    "retrieval": {"ground"},
    "data": {"ground"},
    "training": {"ground"},
    "loading": {"ground"},
    "evaluation": {"ground", "data", "loading"},
    "callbacks": {"ground", "data", "training", "loading", "evaluation"},
    "serving": {"ground", "retrieval"},
    "commands": {"ground", "retrieval", "data", "loading", "evaluation", "serving"},
    "entry": {"ground", "retrieval", "data", "training", "loading", "evaluation", "callbacks", "serving", "commands"},
}


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path = REPO) -> dict[str, Path]:
    return {module_name(p, root): p for package in PACKAGES for p in sorted((root / package).rglob("*.py"))}


def import_graph(root: Path = REPO) -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its file (at the top or inside a function)."""
    known = modules(root)
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                # `from package import module` imports the module; `from module import name`, the module.
                found = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                         for a in node.names]  # fmt: skip
            else:
                continue
            targets |= {t for t in found if t.split(".")[0] in PACKAGES and t != name}
        graph[name] = targets
    return graph


def floor(module: str) -> str:
    matches = [(len(prefix), name) for name, prefixes in FLOORS.items() for prefix in prefixes
               if module == prefix or module.startswith(prefix + ".")]  # fmt: skip
    return max(matches)[1]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{a} ({floor(a)}) imports {b} ({floor(b)})"
        for a, targets in graph.items()
        for b in targets
        if floor(b) != floor(a) and floor(b) not in MAY_IMPORT[floor(a)]
    )


def test_every_import_goes_to_a_floor_the_table_allows():
    assert upward_imports(import_graph()) == []


def test_no_import_circle_even_through_imports_inside_functions():
    assert cycles(import_graph()) == []


def write_tree(root: Path, files: dict[str, str]) -> None:
    """Files of a made-up repository under `root`: {relative path: text}."""
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_the_checker_sees_a_circle_and_an_upward_import_hidden_in_a_function(tmp_path):
    files = {
        "lightning_gpt/__init__.py": "",
        "lightning_gpt/model.py": "def build():\n    from lightning_gpt.training import language_model\n",
        "lightning_gpt/training/__init__.py": "",
        "lightning_gpt/training/language_model.py": "from lightning_gpt.model import build\n",
    }
    write_tree(tmp_path, files)
    graph = import_graph(tmp_path)
    assert cycles(graph) == [["lightning_gpt.model", "lightning_gpt.training.language_model"]]
    assert upward_imports(graph) == [
        "lightning_gpt.model (ground) imports lightning_gpt.training.language_model (training)"
    ]


def test_the_training_modules_and_the_commands_are_where_a_reader_looks():
    names = modules()
    for module in ("language_model", "dpo", "reward_model", "optim", "preference_losses"):
        assert f"lightning_gpt.training.{module}" in names
    for command in ("generate", "chat", "evaluate_chat", "make_pairs", "export", "serve", "web"):
        assert floor(f"lightning_gpt.commands.{command}") == "commands"
    assert {"lightning_gpt.serving.app", "lightning_gpt.serving.engine", "lightning_gpt.retrieval.index"} <= set(names)


_NO_LIGHTNING = """
import sys
from lightning_gpt.__main__ import command_parser
ckpt = sys.argv[1]
for name, argv, extra in (
    ("generate", ["--ckpt_path", ckpt, "--prompt", "Hi", "--max_new_tokens", "2"], {}),
    ("chat", ["--ckpt_path", ckpt, "--max_new_tokens", "2"], {"lines": ["Hello"]}),
):
    module, parser = command_parser(name)
    module.run(parser.parse_args(argv), **extra)
print(sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning")))
"""


@pytest.mark.slow
def test_the_commands_that_use_checkpoints_never_import_lightning(tmp_path):
    """generate and chat run for real in a fresh interpreter; Lightning costs seconds to import and they need none."""
    from lightning_gpt.chat import chat_tokenizer
    from lightning_gpt.training import GPTModule
    from tests.conftest import save_module

    ckpt = save_module(GPTModule(preset="tiny", n_layer=1, n_embd=32, block_size=32,
                                 vocab_size=chat_tokenizer().vocab_size), tmp_path / "chat.ckpt")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", _NO_LIGHTNING, ckpt], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


# --- the tests' own layout -----------------------------------------------------------------------------------------

# Tests of no one module (the command line, the real configs, the layout, the GPU suite, the README's quickstart, the
# console and TensorBoard tags of every stage) stay at tests/ top.
CROSS_CUTTING = {
    "test_cli.py",
    "test_layout.py",
    "test_real_configs.py",
    "test_multi_gpu_configs.py",
    "test_gpu_suite.py",
    "test_tokenizers_across_stages.py",
    "test_quickstart.py",
    "test_console.py",
    "test_tensorboard_tags.py",
}


def misplaced_tests(root: Path = REPO) -> list[str]:
    """What breaks the tests' layout under `root`: a test module flat in tests/ (not cross-cutting), a test folder
    that mirrors no package folder, a test module that imports another (shared builders belong in a conftest.py)."""
    tests, problems = root / "tests", []
    for path in sorted(tests.rglob("test_*.py")):
        where = path.relative_to(tests)
        if len(where.parts) == 1 and where.name not in CROSS_CUTTING:
            problems.append(f"tests/{where} is flat: move it to the folder that mirrors the module it tests")
        if len(where.parts) > 1 and not (root / where.parent).is_dir():
            problems.append(f"tests/{where.parent} mirrors no package folder")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            if any(name.startswith("tests.") and name.rsplit(".", 1)[-1].startswith("test_") for name in names):
                problems.append(f"tests/{where} imports a test module")
    return problems


def test_the_tests_mirror_the_package_and_no_test_module_imports_another():
    assert misplaced_tests() == []


def test_the_tests_layout_checker_sees_a_flat_file_a_stray_folder_and_a_test_import(tmp_path):
    files = {
        "lightning_gpt/serving/app.py": "",
        "tests/lightning_gpt/serving/test_app.py": "from tests.conftest import REPO\n",
        "tests/test_app_edges.py": "",
        "tests/lightning_gpt/servers/test_web.py": "def f():\n    from tests.lightning_gpt.serving import test_app\n",
    }
    write_tree(tmp_path, files)
    assert misplaced_tests(tmp_path) == [
        "tests/lightning_gpt/servers mirrors no package folder",
        "tests/lightning_gpt/servers/test_web.py imports a test module",
        "tests/test_app_edges.py is flat: move it to the folder that mirrors the module it tests",
    ]
