"""No function in product code is longer than 60 lines (``def`` line to its
last line, decorators not counted). A longer one is split by meaning: each
part gets a name and a docstring that says what it decides."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
LIMIT = 60
#: product code; the dev harness (loraplane/devcluster, demo, traffic, tiny model) and perf are not product
PRODUCT = ["operator", "worker_image", "training_jobs", "modelstore", "loraplane/contracts", "loraplane/cli.py"]


#: Functions that landed on main over the limit after this test was written (worker structured
#: output, ModelStore on S3 and backup), merged as they are: "path:name" -> their length now. They
#: may only shrink; split them by meaning and remove them from here.
PENDING: dict[str, int] = {}


def long_functions(limit: int = LIMIT) -> list[str]:
    out = []
    for entry in PRODUCT:
        root = ROOT / entry
        for path in [root] if root.is_file() else sorted(root.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    key = f"{path.relative_to(ROOT)}:{node.name}"
                    if lines > max(limit, PENDING.get(key, 0) if limit == LIMIT else 0):
                        out.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    return out


def test_no_product_function_over_60_lines():
    found = long_functions()
    assert not found, f"functions over {LIMIT} lines (split them by meaning):\n" + "\n".join(found)


def test_the_check_sees_functions():
    assert long_functions(limit=5), "the walker found no function over 5 lines: it is not looking"
