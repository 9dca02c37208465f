"""CI runs exactly the README's two commands."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_commands():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    commands = [line for line in ci if ".venv" in line]
    assert len(commands) == 2
    for cmd in commands:
        assert cmd in readme.splitlines(), f"README lacks the CI command: {cmd}"
    assert "pytest" in commands[1] and "allegro-jax" in commands[0]
