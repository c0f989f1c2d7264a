"""The control registry never forgives: duplicate, failing, missing or nameless controls raise.

Control modules here are real modules in a throw-away package on sys.path,
imported by the same load_registry the daemon uses.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from k3s_agent.controls import CONTROL_MODULES, Registry, RegistryError, default_registry, load_registry
from k3s_agent.controls.base import ControlSpec
from k3s_agent.host import Host
from k3s_agent.policy.loader import Layer, compose
from k3s_agent.policy.schema import PolicyError

GOOD = """
from k3s_agent.controls.base import ControlSpec
SPEC = ControlSpec(name={name!r}, build=lambda policy, host: None)
"""


def spec(name: str) -> ControlSpec:
    return ControlSpec(name=name, build=lambda policy, host: None)


@pytest.fixture
def package(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An empty package `fakectl_<n>` on sys.path; removed with its modules afterwards."""
    name = f"fakectl_{tmp_path.name.replace('-', '_')}"
    folder = tmp_path / name
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    sys.path.insert(0, str(tmp_path))
    yield name, folder
    sys.path.remove(str(tmp_path))
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module]


def write(folder: Path, module: str, text: str) -> None:
    (folder / f"{module}.py").write_text(textwrap.dedent(text))


def test_registers_in_order_and_reads_as_a_mapping() -> None:
    registry = Registry([spec("b"), spec("a")])
    assert list(registry) == ["b", "a"]
    assert registry["a"].name == "a" and len(registry) == 2 and "c" not in registry


def test_a_duplicate_name_raises() -> None:
    registry = Registry([spec("sysctl")])
    with pytest.raises(RegistryError, match="control 'sysctl' registered twice"):
        registry.register(spec("sysctl"))
    with pytest.raises(RegistryError, match="registered twice"):
        Registry([spec("x"), spec("x")])


def test_require_names_every_missing_control() -> None:
    with pytest.raises(RegistryError, match=r"missing: files, sshd \(registered: sysctl\)"):
        Registry([spec("sysctl")]).require(["sysctl", "files", "sshd"])


def test_loads_every_module(package: tuple[str, Path]) -> None:
    name, folder = package
    for module in ("one", "two"):
        write(folder, module, GOOD.format(name=module))
    assert list(load_registry(("one", "two"), package=name)) == ["one", "two"]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("import no_such_dependency\n", "ModuleNotFoundError: No module named 'no_such_dependency'"),
        ("raise ImportError('libfoo too old')\n", "ImportError: libfoo too old"),
        ("def broken(:\n", "SyntaxError"),
        ("raise RuntimeError('boom at import')\n", "RuntimeError: boom at import"),
    ],
    ids=["missing-dependency", "import-error", "syntax-error", "runtime-error"],
)
def test_a_module_that_fails_to_import_raises_naming_it(
    package: tuple[str, Path], text: str, why: str
) -> None:
    name, folder = package
    write(folder, "good", GOOD.format(name="good"))
    write(folder, "bad", text)
    with pytest.raises(RegistryError, match=f"control module {name}.bad failed to import: ") as caught:
        load_registry(("good", "bad"), package=name)
    assert why in str(caught.value)


def test_a_module_that_does_not_exist_raises(package: tuple[str, Path]) -> None:
    """A renamed control module: the old code skipped it and the control disappeared."""
    name, _folder = package
    with pytest.raises(RegistryError, match=f"control module {name}.gone failed to import"):
        load_registry(("gone",), package=name)


def test_a_renamed_spec_is_an_expected_control_missing(package: tuple[str, Path]) -> None:
    name, folder = package
    write(folder, "firewall", GOOD.format(name="fw"))
    with pytest.raises(RegistryError, match=r"expected control\(s\) missing: firewall \(registered: fw\)"):
        load_registry(("firewall",), package=name)


def test_two_modules_with_one_name_raise(package: tuple[str, Path]) -> None:
    name, folder = package
    write(folder, "one", GOOD.format(name="same"))
    write(folder, "two", GOOD.format(name="same"))
    with pytest.raises(RegistryError, match="control 'same' registered twice"):
        load_registry(("one", "two"), package=name)


def test_a_module_without_spec_raises(package: tuple[str, Path]) -> None:
    name, folder = package
    write(folder, "empty", "SPECS = None\n")
    with pytest.raises(RegistryError, match=f"control module {name}.empty has no SPEC"):
        load_registry(("empty",), package=name)


def test_the_default_registry_is_every_control_built_once() -> None:
    assert tuple(default_registry()) == CONTROL_MODULES
    assert default_registry() is default_registry()


def test_the_loader_validates_against_the_registry_it_is_given(tmp_path: Path) -> None:
    """No global lookup: a policy naming a control outside the given registry is refused."""
    only_sysctl = Registry([default_registry()["sysctl"]])
    layer = Layer("local.toml", {"extends": "none", "controls": {"files": {"enabled": False}}})
    with pytest.raises(PolicyError, match=r"controls.files: unknown control \(known controls: sysctl\)"):
        compose(Host(root=str(tmp_path)), [layer], registry=only_sysctl)
    bare = Layer("local.toml", {"extends": "none"})
    policy = compose(Host(root=str(tmp_path)), [bare], registry=only_sysctl)
    assert list(policy.controls) == ["sysctl"]


def test_the_daemon_does_not_start_with_a_broken_registry(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Exit 70 naming the module, before any policy is loaded or any control runs."""
    from k3s_agent import daemon

    def broken() -> Registry:
        raise RegistryError("control module k3s_agent.controls.sshd failed to import: ImportError: x")

    monkeypatch.setattr(daemon, "default_registry", broken)
    monkeypatch.setattr(daemon, "configure", lambda **_kw: None)  # leave structlog alone
    assert daemon.main(["--root", str(tmp_path)]) == 70
    assert "k3s_agent.controls.sshd failed to import" in capsys.readouterr().err
