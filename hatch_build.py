"""Build hook: make `import portraitkit_cli` work in an editable install.

A wheel renames ./cli to portraitkit_cli through `sources`; hatchling's dev mode cannot
rename a package (pfmoore/editables#20). For editable builds we ship a one-file shim package
whose `__path__` points at the checkout's cli/ folder, so edits there apply at once.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SHIM = '''"""Editable install of portraitkit: the CLI package is the checkout's cli/ folder."""

__path__ = [{cli_dir!r}]
__file__ = {init!r}
with open(__file__, encoding="utf-8") as _source:
    exec(compile(_source.read(), __file__, "exec"))
'''


class EditableCliShim(BuildHookInterface):  # type: ignore[type-arg]
    """Adds the portraitkit_cli shim to editable wheels only."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if version != "editable":
            return
        cli_dir = Path(self.root, "cli").resolve()
        shim_dir = Path(tempfile.mkdtemp(prefix="portraitkit-shim-"))
        shim = shim_dir / "__init__.py"
        shim.write_text(SHIM.format(cli_dir=str(cli_dir), init=str(cli_dir / "__init__.py")))
        # Replaces the wheel's force-include for editable builds: the SQL is read from the
        # checkout there, so no stale copy lands in site-packages.
        build_data["force_include_editable"] = {str(shim): "portraitkit_cli/__init__.py"}
