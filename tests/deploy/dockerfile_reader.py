"""A small Dockerfile reader for the tests: instructions grouped into build stages.

Only what the tests need: line continuations joined, comments dropped, exec-form (JSON) arguments
decoded, ENV key=value pairs split. It is no replacement for BuildKit's parser, and hadolint
(which uses a real parser) runs on the same files in test_dockerfiles.py.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    """One instruction: `keyword` upper-cased, `args` the raw text after it, `line` 1-based."""

    keyword: str
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON-array form of CMD/ENTRYPOINT/HEALTHCHECK CMD arguments, or None for shell form."""
        text = self.args
        if self.keyword == "HEALTHCHECK":
            _, _, text = text.partition(" CMD ")
        text = text.strip()
        if not text.startswith("["):
            return None
        return json.loads(text)


@dataclass(frozen=True)
class Stage:
    """A build stage: its base image, optional name, and its instructions after FROM."""

    base: str
    name: str | None
    instructions: tuple[Instruction, ...] = field(default_factory=tuple)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        """Every ENV key=value of this stage (later assignments win, as in Docker)."""
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for token in shlex.split(instruction.args):
                key, sep, value = token.partition("=")
                if not sep:
                    raise ValueError(f"line {instruction.line}: use ENV key=value, not the legacy form")
                values[key] = value
        return values


def read_instructions(path: Path) -> list[Instruction]:
    """All instructions of a Dockerfile, continuation lines joined (comments inside are skipped)."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment line inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        text = " ".join(part for part in pending if part)
        keyword, _, args = text.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
        pending = []
    if pending:
        raise ValueError(f"{path}: instruction starting at line {start} ends in a continuation")
    return instructions


def read_stages(path: Path) -> list[Stage]:
    """Split a Dockerfile into build stages at each FROM (instructions before the first are ARGs)."""
    stages: list[Stage] = []
    current: list[Instruction] = []
    header: tuple[str, str | None] | None = None
    for instruction in read_instructions(path):
        if instruction.keyword == "FROM":
            if header is not None:
                stages.append(Stage(header[0], header[1], tuple(current)))
            words = [w for w in instruction.args.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            header, current = (words[0], name), []
        elif header is not None:
            current.append(instruction)
    if header is not None:
        stages.append(Stage(header[0], header[1], tuple(current)))
    return stages


def pip_install_commands(stage: Stage) -> list[list[str]]:
    """The argument lists of every `pip install` inside the stage's RUN instructions."""
    commands = []
    for run in stage.all("RUN"):
        for words in _shell_commands(run.args):
            for index in range(len(words) - 1):
                if words[index].endswith("pip") and words[index + 1] == "install":
                    commands.append(words[index + 2 :])
    return commands


def _shell_commands(script: str) -> list[list[str]]:
    """Split a shell line into simple commands at `&&`, `||`, `;` and `|`, honouring quotes."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", "||", ";", "|"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]
