"""How every convserve command shows its options' defaults in --help.

Why one formatter: a user reading `convserve classify --help` should see that a request gives up
after 10 s without opening the source, and every command should say it the same way. argparse's
own ArgumentDefaultsHelpFormatter also prints "(default: None)" for options whose default means
"ask the server" and repeats defaults a help text already states; this one does neither.
"""

from __future__ import annotations

import argparse


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends "(default: X)" to an option's help unless its help already names its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if default is argparse.SUPPRESS or not action.option_strings or "default" in text.lower():
            return text
        if default is None or default is False or (isinstance(default, (str, tuple, list)) and not default):
            return text  # flags, "ask the server", empty: nothing worth saying
        return f"{text} (default: %(default)s)"
