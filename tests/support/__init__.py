"""Helpers the tests share (namespaces, a real sshd, the K3s fixture, firewall and
metrics builders), imported as `tests.support.<name>`; see docs/design.md "Shape"."""
