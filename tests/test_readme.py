"""The README's commands and example are the ones that work."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -e ".[test]" && python -m pytest' in readme.split("## ")[0]
    assert "\npython -m pytest\n" in ci


def test_readme_usage_example_runs():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Usage\n\n```python\n(.*?)```", readme, re.S).group(1)
    exec(compile(block, "README.md", "exec"), {})


def test_public_names_are_complete_and_sorted():
    import fastconv

    assert fastconv.__all__ == sorted(fastconv.__all__)
    for name in fastconv.__all__:
        assert hasattr(fastconv, name), name
    public = {n for n in dir(fastconv) if not n.startswith("_") and callable(getattr(fastconv, n))}
    assert public <= set(fastconv.__all__), sorted(public - set(fastconv.__all__))


def test_public_functions_have_numpydoc_sections():
    """Parameters for functions that take any, Returns for functions that return something."""
    import inspect

    import fastconv

    for name in fastconv.__all__:
        obj = getattr(fastconv, name)
        if not inspect.isfunction(obj):
            continue
        doc = inspect.getdoc(obj) or ""
        sig = inspect.signature(obj)
        if sig.parameters:
            assert "Parameters\n----------" in doc, f"{name}: no Parameters section"
        if sig.return_annotation not in ("None", None, inspect.Signature.empty) or "return " in inspect.getsource(obj):
            if sig.return_annotation not in ("None", None) and name not in ("num_threads",):
                assert "Returns\n-------" in doc, f"{name}: no Returns section"
