"""Every ``dsclora[extra]`` the package or the README tells a user to install exists in pyproject.toml (a hint
naming a missing extra installs nothing: pip only warns)."""

from __future__ import annotations

import re

from support import REPO


def test_every_extra_named_in_hints_and_docs_is_declared() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()  # tomllib is 3.11+; the section's keys are plain
    section = pyproject.split("[project.optional-dependencies]")[1].split("\n[")[0]
    declared = set(re.findall(r"^([\w\-]+) = ", section, re.M))
    texts = [(REPO / "README.md").read_text(), *(p.read_text() for p in (REPO / "src").rglob("*.py"))]
    named = {
        extra for text in texts for group in re.findall(r"dsclora\[([\w,\-]+)\]", text) for extra in group.split(",")
    }
    assert {"spandrel", "video", "onnx"} <= named  # the hints this test exists for are found
    assert named <= declared, f"named but not declared: {sorted(named - declared)}"
