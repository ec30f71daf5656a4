"""The click command line. Nothing else in the package imports it."""
from __future__ import annotations

import importlib
import importlib.util

import click

from .. import __version__

# command name -> module (inside this package) defining a click command of that name; loaded lazily
# so that `llava-doctor audit` never pays for the imports of `data` or `reproduce`.
COMMANDS = {
    "audit": "audit",
    "data": "data",
    "demo": "demo",
    "explain": "rules",
    "generate": "generate",
    "inspect": "inspect",
    "logs": "logs",
    "preflight": "preflight",
    "reproduce": "reproduce",
    "rules": "rules",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(name for name, module in COMMANDS.items() if self._spec(module))

    @staticmethod
    def _spec(module):
        return importlib.util.find_spec(f"{__name__}.{module}") is not None

    def get_command(self, ctx, name):
        module = COMMANDS.get(name)
        if module is None or not self._spec(module):
            return None
        return getattr(importlib.import_module(f"{__name__}.{module}"), name.replace("-", "_"))


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="llava-doctor")
def main() -> None:
    """llava-doctor: find the silent failures of LLaVA-style multimodal training.

    Exit codes: 0 clean, 1 findings at or above --fail-on, 2 usage error (an unknown code, prefix, option
    value or format; a selection that leaves nothing to check) or an input that could not be read (also
    with --exit-zero, which only stops findings from failing).
    """
