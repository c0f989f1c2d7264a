"""k3s-agentd: keeps a K3s node hardened, continuously."""

# The one place the version lives: pyproject.toml, the .deb and the .rpm read it from here.
__version__ = "0.1.0"
