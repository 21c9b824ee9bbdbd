"""Any server the project starts or tells its users to start listens on 127.0.0.1 only."""

from __future__ import annotations

import re

from tests.conftest import ROOT

SERVER = re.compile(r"mlflow (ui|server)\b[^\n`\"]*")


def test_every_server_command_binds_to_localhost() -> None:
    found = []
    for name in ("Makefile", "README.md"):
        for command in SERVER.finditer((ROOT / name).read_text()):
            found.append(command.group(0))
            assert "--host 127.0.0.1" in command.group(0), f"{name}: {command.group(0)}"
    assert found  # the MLflow UI hint is there, and checked
