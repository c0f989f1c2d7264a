"""The registry of controls, in the order the engine runs them.

A Registry is passed explicitly to whoever needs the controls (the policy
loader, the engine, the rollback); `default_registry()` is the one this build
ships, built once. Like mgmt's RegisterResource (engine/resources.go), which
panics on a duplicate or unknown kind, a registry never forgives: a second
control of one name, a control module that fails to import, or an expected
control that is missing is a RegistryError at start, never a control that
silently disappears from checks and reports.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Optional

from k3s_agent.controls.base import ControlSpec

# Order matters a little: sysctl and files first (cheap, local), the firewall
# before sshd (a port change is then already open), the K3s verifiers last.
# Each module's SPEC must carry the module's name.
CONTROL_MODULES = ("sysctl", "files", "firewall", "sshd", "k3s_args", "k3s_encryption")
PACKAGE = "k3s_agent.controls"


class RegistryError(Exception):
    """The controls of this build are not what they must be (a packaging or code bug)."""


class Registry(Mapping[str, ControlSpec]):
    """Control specs by name, in registration order; a name is registered once."""

    def __init__(self, specs: Iterable[ControlSpec] = ()):
        self._specs: dict[str, ControlSpec] = {}
        for spec in specs:
            self.register(spec)

    def register(self, spec: ControlSpec) -> None:
        if spec.name in self._specs:
            raise RegistryError(f"control {spec.name!r} registered twice")
        self._specs[spec.name] = spec

    def require(self, names: Iterable[str]) -> None:
        """RegistryError naming every one of names that is not registered."""
        missing = [name for name in names if name not in self._specs]
        if missing:
            have = ", ".join(self._specs) or "none"
            raise RegistryError(f"expected control(s) missing: {', '.join(missing)} (registered: {have})")

    def __getitem__(self, name: str) -> ControlSpec:
        return self._specs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def __repr__(self) -> str:
        return f"Registry({', '.join(self._specs)})"


def load_registry(modules: Sequence[str] = CONTROL_MODULES, package: str = PACKAGE) -> Registry:
    """Import <package>.<module> for each of modules and register its SPEC.

    Any failure names the module: an import error of any kind (a renamed or
    broken control is a bug to see at start, not a control to skip), a module
    without a SPEC, a duplicate name, or a module whose SPEC carries another
    name (the expected control is then missing).
    """
    registry = Registry()
    for module_name in modules:
        qualified = f"{package}.{module_name}"
        try:
            module = importlib.import_module(qualified)
        except Exception as exc:
            raise RegistryError(
                f"control module {qualified} failed to import: {type(exc).__name__}: {exc}"
            ) from exc
        spec: Optional[ControlSpec] = getattr(module, "SPEC", None)
        if not isinstance(spec, ControlSpec):
            raise RegistryError(f"control module {qualified} has no SPEC (a ControlSpec)")
        registry.register(spec)
    registry.require(modules)
    return registry


@functools.cache
def default_registry() -> Registry:
    """The controls of this build (CONTROL_MODULES), imported once."""
    return load_registry()
