"""The shape of the package's code, as a reader meets it: its longest functions, its size, and the
functions whose docstring is longer than their body.

    python bench/code_shape.py [--top 10] [--root diffusion]

Lengths count a function's lines from its ``def`` to its last line, less its docstring (decorators
and signature included). Prints a Markdown table; docs/benchmarks.md records the figures.
"""

import argparse
import ast
from pathlib import Path


def functions(root: Path):
    """(qualified name, lines without docstring, docstring lines, body lines) of every function."""
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        stack = [(tree, "")]
        while stack:
            node, prefix = stack.pop()
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.ClassDef):
                    stack.append((child, f"{prefix}{child.name}."))
                elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                    start = min([d.lineno for d in child.decorator_list] + [child.lineno])
                    total = child.end_lineno - start + 1
                    first = child.body[0]
                    has_doc = isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant)
                    has_doc = has_doc and isinstance(first.value.value, str)
                    doc = first.end_lineno - first.lineno + 1 if has_doc else 0
                    body_nodes = child.body[1:] if has_doc else child.body
                    body = body_nodes[-1].end_lineno - body_nodes[0].lineno + 1 if body_nodes else 0
                    name = f"{path.relative_to(root.parent)}::{prefix}{child.name}"
                    yield name, total - doc, doc, body
                    stack.append((child, f"{prefix}{child.name}."))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1] / "diffusion")
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    found = list(functions(args.root))
    lines = sum(len(p.read_text(encoding="utf-8").splitlines()) for p in args.root.rglob("*.py"))
    files = len(list(args.root.rglob("*.py")))
    print(f"{args.root.name}/: {lines} lines in {files} files, {len(found)} functions")
    print(f"functions over 60 lines without their docstring: {sum(n > 60 for _, n, _, _ in found)}")
    # A public entry point may explain more than it does; a private helper or a method should not.
    longer = [name for name, _, doc, body in found if doc > body]
    print(f"functions whose docstring is longer than their body: {len(longer)}\n")
    print("| function | lines (no docstring) |\n|---|---|")
    for name, n, _, _ in sorted(found, key=lambda f: -f[1])[: args.top]:
        print(f"| `{name}` | {n} |")


if __name__ == "__main__":
    main()
