"""The public API re-exported from micro_doe (imported lazily)."""

from __future__ import annotations

import micro_doe as md


def test_every_public_name_resolves():
    for name in md.__all__:
        assert getattr(md, name).__name__ == name
    assert {"LDMGenerator", "check_recipe", "Study", "objective", "tune", "parse_spec", "SpecError"} <= set(md.__all__)
