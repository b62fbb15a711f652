"""The README on a fresh machine: its examples run as written and state what the code does, its
two commands set everything up themselves, and every document the repository mentions is in it.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from event_sourcing.catalog import default_registry
from event_sourcing.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BIN = Path(sys.executable).parent


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, re.S | re.M)


def example_env() -> dict[str, str]:
    """A user's shell: the venv's `mlevents` on PATH, no store chosen by the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLEVENTS_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.mark.slow
def test_the_examples_run_as_written(tmp_path: Path) -> None:
    """Every python block, in order, then every shell block but the `make` one, in one folder."""
    python, shell = blocks("python"), [b for b in blocks("bash") if not b.startswith("make ")]
    assert len(python) >= 3 and shell, "the README lost its examples"
    for number, code in enumerate(python):
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, env=example_env(),
            capture_output=True, text=True, timeout=300, check=False,
        )
        assert result.returncode == 0, f"python example {number + 1} failed:\n{result.stderr}"
    outputs = {}
    for block in shell:
        for line in block.splitlines():
            command = line.split("#")[0].strip()
            if not command:
                continue
            result = subprocess.run(
                command, shell=True, cwd=tmp_path, env=example_env(), capture_output=True,
                text=True, timeout=120, check=False,
            )
            assert result.returncode == 0, f"`{command}` failed:\n{result.stderr}"
            outputs[command] = result.stdout
    assert "breast_cancer_classifier" in outputs["mlevents models"]
    deployed = outputs["mlevents read --type model_deployed --limit 1"]
    assert '"event_type":"model_deployed"' in deployed
    assert (tmp_path / ".mlevents" / "events.db").is_file()


def test_the_readme_states_what_the_code_does() -> None:
    from pipelines.dataset import DATASET_ID
    from pipelines.models import MODELS
    from pipelines.state import MODEL_NAME

    # The examples use the demo's data sets (breast cancer; wine is its second model).
    demo = {model.dataset.dataset_id for model in MODELS}
    assert demo == {"breast_cancer", "wine"}
    used = set(re.findall(r'dataset_id="(\w+)"', README))
    assert DATASET_ID in used and used <= demo, used - demo
    assert MODEL_NAME in README
    for event_type in default_registry.types():
        assert f"`{event_type}`" in README, f"the README does not list {event_type}"
    commands = set(_subcommands())
    section = README[README.index("## Command line") : README.index("## Benchmarks")]
    documented = set(re.findall(r"^mlevents ([a-z-]+)", section, re.M))
    for row in re.findall(r"^\| (`.*)$", section, re.M):
        first_cell = re.split(r"(?<!\\)\|", row)[0]
        documented |= set(re.findall(r"`([a-z][a-z-]*)", first_cell))
    assert documented <= commands, f"documented but missing: {documented - commands}"
    undocumented = {c for c in commands - documented if f"mlevents {c}" not in README}
    assert not undocumented, f"commands the README never mentions: {undocumented}"


def _subcommands() -> list[str]:
    parser = build_parser()
    for action in parser._actions:
        if action.dest == "command":
            return list(action.choices)  # type: ignore[arg-type]
    raise AssertionError("no subcommands")


def test_every_document_the_repository_mentions_is_in_it() -> None:
    """A comment or doc that points at a document (a path such as docs/ordering.md, or a
    capitalized name such as README.md) points at a file of this repository."""
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode().split("\0")
    mention = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)+[\w.-]+\.md|[A-Z][A-Z_]{2,}\.md)\b(?!\()")
    missing = []
    for name in filter(None, tracked):
        path = ROOT / name
        if path.suffix in {".png", ".db"} or not path.is_file():
            continue
        for match in mention.finditer(path.read_text(encoding="utf-8", errors="ignore")):
            target = match.group(1)
            if not ((ROOT / target).exists() or (path.parent / target).exists()):
                missing.append(f"{name} mentions {target}")
    assert missing == []


# -- the README's two commands ----------------------------------------------------------------


def make(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    return subprocess.run(
        ["make", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_make_test_installs_chromium_when_it_is_missing(tmp_path: Path) -> None:
    planned = make("-n", "test", f"MLEVENTS_CHROMIUM={tmp_path / 'no-chromium'}").stdout
    assert "apt-get install -y -qq chromium" in planned
    assert planned.index("apt-get install") < planned.index("-m pytest")
    present = tmp_path / "chromium"
    present.touch()
    assert "apt-get" not in make("-n", "test", f"MLEVENTS_CHROMIUM={present}").stdout
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "apt-get" not in ci and ci.rstrip().endswith("make test")


def test_make_run_stops_when_its_port_is_taken(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = make("run", f"PORT={port}", f"DAGSTER_HOME_DIR={tmp_path / 'home'}")
    assert result.returncode != 0
    assert f"port {port} on 127.0.0.1 is taken" in result.stderr
    assert f"make run PORT={port + 1}" in result.stderr
    assert "Open http" not in result.stdout  # nothing started, nothing announced
    assert not (tmp_path / "home").exists()
