"""The registry of controls, in the order the engine runs them."""

from __future__ import annotations

import importlib

from k3s_agent.controls.base import ControlSpec

# Order matters a little: sysctl and files first (cheap, local), the firewall
# before sshd (a port change is then already open), the K3s verifiers last.
CONTROL_MODULES = ("sysctl", "files", "firewall", "sshd", "k3s_args", "k3s_encryption")

_specs: dict[str, ControlSpec] = {}


def specs() -> dict[str, ControlSpec]:
    """Every control that exists in this build, by name."""
    if not _specs:
        for module_name in CONTROL_MODULES:
            qualified = f"k3s_agent.controls.{module_name}"
            try:
                module = importlib.import_module(qualified)
            except ModuleNotFoundError as exc:
                # A control that has not landed yet; any other import error is real.
                if exc.name == qualified:
                    continue
                raise
            spec: ControlSpec = module.SPEC
            _specs[spec.name] = spec
    return _specs
