"""Print a pip constraints file that pins every dependency of pyproject.toml to its declared lower bound, so CI can
prove the lowest versions we declare really work (`make test-lowest`)."""

import re
import sys
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
extras = sys.argv[1:]  # e.g. dev
requirements = list(project["dependencies"]) + [r for e in extras for r in project["optional-dependencies"][e]]
for requirement in requirements:
    spec = requirement.split(";")[0]
    match = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(?:\[[^\]]*\])?.*?>=\s*([^,\s]+)", spec)
    if match:
        print(f"{match.group(1)}=={match.group(2)}")
