"""Read a systemd unit the way systemd does, for the parts K3s depends on.

ExecStart (its argv), Environment= and EnvironmentFile= (in that order: the
files override Environment=, later files override earlier ones; systemd.exec(5)),
with drop-ins from <dir>/<unit>.d/*.conf applied in file-name order
(systemd.unit(5)). An empty `ExecStart=` in a drop-in resets the list.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Optional

from k3s_agent.host import Host, HostError

# systemd.unit(5) "Unit File Load Path", system manager, highest priority first.
UNIT_DIRS = (
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
)


@dataclasses.dataclass(frozen=True)
class UnitFile:
    name: str
    fragment: str  # host path of the main unit file
    dropins: tuple[str, ...]
    exec_start: tuple[str, ...]  # argv of the (last) ExecStart=
    environment: dict[str, str]
    env_files: tuple[str, ...]  # files actually read (host paths)
    problems: tuple[str, ...] = ()

    @property
    def role(self) -> Optional[str]:
        """server / agent: the first non-flag word after the program (K3s's subcommand)."""
        for word in self.exec_start[1:]:
            if word in ("server", "agent"):
                return word
            if not word.startswith("-"):
                return None
        return None


def find_unit(host: Host, name: str) -> Optional[str]:
    for folder in UNIT_DIRS:
        path = f"{folder}/{name}"
        if host.exists(path):
            return path
    return None


def find_dropins(host: Host, name: str) -> list[str]:
    by_name: dict[str, str] = {}
    for folder in UNIT_DIRS:
        for found in host.glob(f"{folder}/{name}.d", "*.conf"):
            by_name.setdefault(found, f"{folder}/{name}.d/{found}")
    return [by_name[key] for key in sorted(by_name)]


def load_unit(host: Host, name: str) -> Optional[UnitFile]:
    fragment = find_unit(host, name)
    if fragment is None:
        return None
    dropins = find_dropins(host, name)
    problems: list[str] = []
    exec_start: list[str] = []
    environment: dict[str, str] = {}
    env_file_specs: list[str] = []
    for path in (fragment, *dropins):
        try:
            text = _read(host, path)
        except HostError as exc:
            problems.append(str(exc))
            continue
        for section, key, value in parse_ini(text):
            if section != "Service":
                continue
            if key == "ExecStart":
                exec_start = split_command(value) if value.strip() else []
            elif key == "Environment":
                for word in split_words(value):
                    if "=" in word:
                        k, v = word.split("=", 1)
                        environment[k] = v
            elif key == "EnvironmentFile":
                if value.strip():
                    env_file_specs.append(value.strip())
                else:
                    env_file_specs = []
    read_files = []
    for spec in env_file_specs:
        optional = spec.startswith("-")
        path = expand_specifiers(spec.lstrip("-"), name)
        try:
            text = _read(host, path)
        except HostError as exc:
            problems.append(str(exc))
            continue
        if text is None:
            if not optional:
                problems.append(f"{path}: EnvironmentFile= is missing (systemd refuses to start the unit)")
            continue
        read_files.append(path)
        environment.update(parse_env_file(text))
    return UnitFile(
        name=name,
        fragment=fragment,
        dropins=tuple(dropins),
        exec_start=tuple(exec_start),
        environment=environment,
        env_files=tuple(read_files),
        problems=tuple(problems),
    )


def _read(host: Host, path: str) -> Optional[str]:
    return host.read_text(path)


def parse_ini(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) triples; backslash-newline continues a line (systemd.syntax(7))."""
    out = []
    section = ""
    pending = ""
    # A continuation on the last line ends at end of file.
    for raw in [*text.splitlines(), ""]:
        line = pending + raw
        if raw.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1] + " "
            continue
        pending = ""
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped[1:-1]
            continue
        if "=" in stripped:
            key, value = stripped.split("=", 1)
            out.append((section, key.strip(), value.strip()))
    return out


_PREFIXES = "-@:+!"


def split_command(value: str) -> list[str]:
    """ExecStart= argv: drop the special prefixes (-, @, :, +, !, !!), then split the words."""
    value = value.lstrip()
    while value and value[0] in _PREFIXES:
        value = value[1:]
    return split_words(value)


def split_words(value: str) -> list[str]:
    """Split like systemd's extract_first_word with quotes and C-style backslash escapes."""
    words: list[str] = []
    current: list[str] = []
    in_word = False
    quote = ""
    i = 0
    while i < len(value):
        char = value[i]
        if char == "\\" and i + 1 < len(value):
            current.append(_unescape(value[i + 1]))
            in_word = True
            i += 2
            continue
        if quote:
            if char == quote:
                quote = ""
            else:
                current.append(char)
        elif char in "'\"":
            quote = char
            in_word = True
        elif char.isspace():
            if in_word:
                words.append("".join(current))
                current, in_word = [], False
        else:
            current.append(char)
            in_word = True
        i += 1
    if in_word:
        words.append("".join(current))
    return words


def _unescape(char: str) -> str:
    return {"n": "\n", "t": "\t", "r": "\r"}.get(char, char)


_ENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")


def parse_env_file(text: str) -> dict[str, str]:
    """KEY=VALUE lines; # and ; comments; quotes stripped (systemd.exec(5) EnvironmentFile=)."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip()[0] in "#;":
            continue
        match = _ENV_LINE.match(line)
        if not match:
            continue
        value = match.group(2).strip()
        words = split_words(value) if value else [""]
        env[match.group(1)] = words[0] if len(words) == 1 else " ".join(words)
    return env


def expand_specifiers(path: str, unit: str) -> str:
    """%N (name without suffix), %n (full name), %% — the ones K3s's unit uses."""
    prefix = unit.rsplit(".", 1)[0]
    return path.replace("%%", "\0").replace("%N", prefix).replace("%n", unit).replace("\0", "%")
