"""YAML with a cap on what aliases can expand to ("billion laughs").

PyYAML shares an aliased node instead of copying it, so loading stays small;
the cost comes later, when K3s's flags are rendered from the data (a 364-byte
config.yaml of nested aliases made 43 MB of flags) or two documents are
compared. Every YAML file the agent reads from the host goes through
CappedLoader: after composing, it counts the document as if every alias were
written out and refuses it when aliases (and `<<` merge keys, which are
aliases too) add more than ALIAS_BUDGET, when an alias refers to a node that
contains it, or when it nests deeper than MAX_DEPTH.
"""

from __future__ import annotations

from typing import Any, Optional

import yaml

# Written-out weight aliases may add: a scalar weighs its length, a collection 1.
ALIAS_BUDGET = 100_000
# K3s config, kubelet drop-ins and audit policies nest a handful of levels;
# the cap keeps PyYAML's recursive constructor far from Python's recursion limit.
MAX_DEPTH = 100


class YAMLLimit(yaml.YAMLError):
    """A document refused for its shape, not its syntax (an expected yaml.YAMLError)."""


class CappedLoader(yaml.SafeLoader):
    """SafeLoader that refuses documents whose aliases expand beyond the caps."""

    _depth = 0

    def get_single_node(self) -> Optional[yaml.Node]:
        node = super().get_single_node()
        if node is not None:
            check_expansion(node)
        return node

    def compose_node(self, parent: Optional[yaml.Node], index: Any) -> yaml.Node:
        # Stop at MAX_DEPTH while composing: the composer recurses per level and
        # the scanner's cost grows with the square of the open flow levels, so a
        # 1 MiB file of "[" must end here, early, not in RecursionError minutes later.
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise YAMLLimit(f"nested deeper than {MAX_DEPTH} levels (line {mark.line + 1})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def safe_load(text: str) -> Any:
    """yaml.safe_load with the caps; YAMLError (YAMLLimit included) for a refused document."""
    return yaml.load(text, Loader=CappedLoader)  # noqa: S506 - CappedLoader is a SafeLoader


def check_expansion(root: yaml.Node, budget: int = ALIAS_BUDGET, max_depth: int = MAX_DEPTH) -> None:
    """Raise YAMLLimit when `root` written out (aliases expanded) is too big, cyclic or deep.

    Iterative, and each distinct node is sized once (memoized by identity), so the
    check costs the size of the file, not of the expansion it measures.
    """
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    literal = 0
    # (node, depth, children pending?) — post-order walk without recursion.
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, True)]
    while stack:
        node, depth, expand = stack.pop()
        key = id(node)
        if expand:
            if key in sizes:
                continue
            if key in on_path:
                raise YAMLLimit(f"an alias at line {node.start_mark.line + 1} refers to a node containing it")
            if depth > max_depth:
                raise YAMLLimit(f"nested deeper than {max_depth} levels (line {node.start_mark.line + 1})")
            on_path.add(key)
            stack.append((node, depth, False))
            for child in _children(node):
                if id(child) in on_path:
                    raise YAMLLimit(
                        f"an alias at line {child.start_mark.line + 1} refers to a node containing it"
                    )
                stack.append((child, depth + 1, True))
            continue
        on_path.discard(key)
        own = _weight(node)
        literal += own
        sizes[key] = own + sum(sizes[id(child)] for child in _children(node))
        if sizes[key] - literal > budget:
            raise YAMLLimit(
                f"aliases expand it beyond {budget} (near line {node.start_mark.line + 1}): "
                "a 'billion laughs' document"
            )


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _weight(node: yaml.Node) -> int:
    return max(1, len(node.value)) if isinstance(node, yaml.ScalarNode) else 1
