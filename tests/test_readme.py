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
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -q --disable-pip-version-check -e ".[test]"' in ci
    assert cmds[1] == 'pip install -e ".[test]" && pytest'
    assert "pytest" in ci
