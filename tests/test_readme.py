"""The README's code runs as written, and its Quickstart commands match CI."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_blocks_run():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks
    for code in blocks:
        ns: dict = {}
        exec(compile(code, "README.md", "exec"), ns)
    assert 0.0 <= ns["fl"].relative_frobenius_error(ns["F"], ns["D"], block=0) < 1.5


def test_quickstart_test_command_is_what_ci_runs():
    text = (ROOT / "README.md").read_text()
    quick = text.split("## Quickstart")[1].split("## ")[0]
    cmds = re.findall(r"```bash\n(.*?)\n```", quick, re.S)
    assert len(cmds) == 2  # exactly two commands: install + study, install + tests
    assert "fimlab study" in cmds[0]
    assert cmds[1] == 'pip install -e ".[test]" && pytest'
    ci = (ROOT / ".ci" / "run").read_text()
    core, extras = ci.split("# 2.")
    # the core step: the README's install, then the suite with the frameworks blocked
    assert 'pip_ -e ".[test]"' in core
    assert "FIMLAB_WITHOUT_EXTRAS=1 python -m pytest" in core


def test_front_end_test_command_installs_what_ci_installs():
    text = (ROOT / "README.md").read_text()
    quick = text.split("## Quickstart")[1].split("## ")[0]
    (cmd,) = re.findall(r"```sh\n(.*?)\n```", quick, re.S)
    ci = (ROOT / ".ci" / "run").read_text().split("# 2.")[1]
    words = lambda s: {w.strip('"\\') for w in s.split()}  # noqa: E731
    readme = words(cmd)
    for p in ("torch==2.13.0", "curvlinops-for-pytorch", "backpack-for-pytorch",
              "linear_operator", "einops", "einconv", "opt-einsum", "unfoldNd", "jaxtyping"):
        assert p in readme and p in words(ci), p
    assert '-e ".[test,torch,jax]"' in cmd and 'pip_ -e ".[test,torch,jax]"' in ci
    assert cmd.rstrip().endswith("pytest") and "python -m pytest -q -p no:cacheprovider" in ci
