"""Data sets that ship with the installed packages (nothing is downloaded)."""
