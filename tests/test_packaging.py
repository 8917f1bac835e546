"""One install path: make setup, CI and the Docker image all go through scripts/setup.sh."""

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_dockerfile_and_makefile_install_through_the_setup_script():
    dockerfile = (REPO / "Dockerfile").read_text()
    runs = [line for line in dockerfile.splitlines() if line.startswith("RUN")]
    assert any("STEP=deps scripts/setup.sh" in line for line in runs)
    assert any("STEP=package scripts/setup.sh" in line for line in runs)
    assert not any("pip install" in line for line in runs)  # no second install path
    assert re.search(r"^ARG BASE_IMAGE=", dockerfile, re.M) and "FROM ${BASE_IMAGE}" in dockerfile
    # dependency metadata is copied (and installed) before the sources, for layer caching
    assert dockerfile.index("COPY setup.cfg") < dockerfile.index("STEP=deps") < dockerfile.index("COPY slicesr slicesr")
    makefile = (REPO / "Makefile").read_text()
    assert "scripts/setup.sh" in makefile.split("setup:")[0]
    assert "bash .ci/run" not in makefile and "make test" in (REPO / ".ci" / "run").read_text()


def test_setup_script_parses():
    subprocess.run(["bash", "-n", str(REPO / "scripts" / "setup.sh")], check=True)
