"""Reading sshd_config the way sshd does, to say which file:line sets a keyword.

`sshd -T` tells the effective value but not where it came from; this parser
replays sshd's reading order so a finding can name the winner. The rules,
from sshd_config(5) and checked against OpenSSH 9.2's `sshd -T`:

- keywords are case-insensitive; arguments follow whitespace or `=`;
- for most keywords the FIRST value read wins; a few (AllowUsers, Port,
  HostKey, ...) accumulate every occurrence;
- `Include` expands each pattern with glob(3) (sorted), relative paths are
  taken under /etc/ssh, and the files are read in place, recursively;
- a `Match` block runs to the next `Match` or to the end of the file it is
  in (a Match in an included file does not leak into the next file); lines
  in it are conditional and never the global value, nor is an `Include`
  inside one; `Match all` returns to global context.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
import shlex
from collections.abc import Iterator, Mapping
from typing import Optional

from k3s_agent.host import Host, HostError, TooLarge

SSH_DIR = "/etc/ssh"
MAX_INCLUDE_DEPTH = 16  # sshd's own limit (servconf.c SERVCONF_MAX_DEPTH)

# Keywords whose every occurrence counts (servconf.c appends instead of
# keeping the first value).
ACCUMULATE = frozenset(
    {
        "allowusers",
        "allowgroups",
        "denyusers",
        "denygroups",
        "acceptenv",
        "hostkey",
        "hostcertificate",
        "listenaddress",
        "port",
    }
)
# Comma-separated algorithm lists.
ALGORITHM_LISTS = frozenset(
    {
        "ciphers",
        "macs",
        "kexalgorithms",
        "hostkeyalgorithms",
        "pubkeyacceptedalgorithms",
        "pubkeyacceptedkeytypes",
        "hostbasedacceptedalgorithms",
        "casignaturealgorithms",
    }
)
# Keywords that take a time (sshd_config(5) TIME FORMATS); `sshd -T` prints seconds.
TIMES = frozenset({"logingracetime", "clientaliveinterval"})
_TIME_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_TIME_PART = re.compile(r"(\d+)([smhdw]?)", re.IGNORECASE)
# OpenSSH 9.2 still prints the old spelling of prohibit-password.
_ALIASES = {("permitrootlogin", "without-password"): "prohibit-password"}


@dataclasses.dataclass(frozen=True)
class Directive:
    keyword: str  # lower case
    value: str
    source: str  # host-absolute file
    line: int

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


def split_line(line: str) -> Optional[tuple[str, str]]:
    """(keyword lower-cased, arguments) of a config line, None for blanks/comments."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    match = re.match(r"([^\s=]+)\s*(?:=\s*)?(.*)$", text)
    if match is None:
        return None
    value = re.sub(r"\s+#.*$", "", match.group(2)).strip()
    return match.group(1).lower(), value


class ConfigReader:
    """Replays sshd's reading order over host files (plus in-memory overrides).

    overlay: host-absolute path -> text, read instead of the file on disk and
    added to any Include glob it matches (how a candidate drop-in is judged
    before it exists).
    """

    def __init__(self, host: Host, overlay: Optional[Mapping[str, str]] = None):
        self.host = host
        self.overlay = dict(overlay or {})
        self.files: list[str] = []
        # Directives inside Match blocks, each with its Match line's criteria:
        # never the global value, but what `sshd -T -C` may apply to one connection.
        self.conditional: list[tuple[Directive, str]] = []
        self.unread: list[TooLarge] = []  # files sshd reads that are beyond our read cap

    def read(self, main: str) -> list[Directive]:
        """Global-context directives in the order sshd reads them."""
        out: list[Directive] = []
        self._read_file(main, out, 0)
        return out

    def include_targets(self, pattern: str) -> list[str]:
        """Host-absolute files an Include pattern names, in sshd's order."""
        absolute = self.unroot(pattern if pattern.startswith("/") else f"{SSH_DIR}/{pattern}")
        found = set(self.host.glob_paths(absolute))
        found |= {p for p in self.overlay if fnmatch.fnmatchcase(p, absolute)}
        return sorted(found)

    def unroot(self, path: str) -> str:
        """A config written for a root prefix (tests, --root) may name rooted paths."""
        root = self.host.root.rstrip("/")
        if root and path.startswith(root + "/"):
            return path[len(root) :]
        return path

    def text(self, path: str) -> Optional[str]:
        if path in self.overlay:
            return self.overlay[path]
        try:
            return self.host.read_text(path)
        except TooLarge as exc:
            if all(seen.path != exc.path for seen in self.unread):
                self.unread.append(exc)
            return None
        except HostError:
            return None

    def _read_file(self, path: str, out: list[Directive], depth: int) -> None:
        text = self.text(path)
        if text is None or depth > MAX_INCLUDE_DEPTH:
            return
        self.files.append(path)
        for number, keyword, value, match in config_lines(text):
            if match is not None:
                if keyword != "include":
                    self.conditional.append((Directive(keyword, value, path, number), match))
            elif keyword == "include":
                for pattern in shlex.split(value):
                    for target in self.include_targets(pattern):
                        self._read_file(target, out, depth + 1)
            else:
                out.append(Directive(keyword, value, path, number))


def config_lines(text: str) -> Iterator[tuple[int, str, str, Optional[str]]]:
    """(line number, keyword, value, the criteria of the Match block it is in or None)."""
    match: Optional[str] = None
    for number, line in enumerate(text.splitlines(), 1):
        parsed = split_line(line)
        if parsed is None:
            continue
        keyword, value = parsed
        if keyword == "match":
            match = None if value.strip().lower() == "all" else f"Match {value.strip()}"
        else:
            yield number, keyword, value, match


def global_lines(text: str) -> Iterator[tuple[int, str, str]]:
    """(line number, keyword, value) of the lines outside Match blocks."""
    for number, keyword, value, match in config_lines(text):
        if match is None:
            yield number, keyword, value


def winners(directives: list[Directive]) -> dict[str, list[Directive]]:
    """keyword -> the directive(s) that decide its value (first, or all when accumulating)."""
    decided: dict[str, list[Directive]] = {}
    for directive in directives:
        if directive.keyword in ACCUMULATE:
            decided.setdefault(directive.keyword, []).append(directive)
        elif directive.keyword not in decided:
            decided[directive.keyword] = [directive]
    return decided


def parse_effective(text: str) -> dict[str, list[str]]:
    """`sshd -T` output: keyword -> every value line it printed."""
    effective: dict[str, list[str]] = {}
    for line in text.splitlines():
        keyword, _, value = line.strip().partition(" ")
        if keyword:
            effective.setdefault(keyword.lower(), []).append(value.strip())
    return effective


def seconds(value: str) -> Optional[int]:
    text = value.strip()
    if not text or _TIME_PART.sub("", text):
        return None
    return sum(int(n) * _TIME_UNITS[u.lower()] for n, u in _TIME_PART.findall(text))


def render(keyword: str, value: object) -> str:
    """A policy value as config text."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        joiner = "," if keyword.lower() in ALGORITHM_LISTS else " "
        return joiner.join(str(v) for v in value)
    return str(value)


def normalize(keyword: str, value: str) -> str:
    """A value the way `sshd -T` prints it, so policy and effective compare."""
    key = keyword.lower()
    text = " ".join(value.split())
    if key in TIMES:
        secs = seconds(text)
        return str(secs) if secs is not None else text
    if key in ALGORITHM_LISTS:
        return ",".join(part.strip() for part in text.split(","))
    if text.lower() in ("yes", "no") or key == "permitrootlogin":
        text = text.lower()
    return _ALIASES.get((key, text), text)


def effective_value(keyword: str, effective: Mapping[str, list[str]]) -> Optional[str]:
    values = effective.get(keyword.lower())
    if not values:
        return None
    if keyword.lower() in ACCUMULATE:
        return " ".join(sorted(set(" ".join(values).split())))
    return normalize(keyword, values[0])


def desired_value(keyword: str, value: object) -> str:
    text = render(keyword, value)
    if keyword.lower() in ACCUMULATE:
        return " ".join(sorted(set(text.split())))
    return normalize(keyword, text)
