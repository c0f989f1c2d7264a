"""What k3s-agentd knows about the K3s on this node.

K3s hides its flags from /proc (it overwrites its argv), so the agent reads
them the way K3s itself builds them: unit.py (the systemd unit and its env
files), config.py (config.yaml + config.yaml.d merged like
k3s-io/k3s pkg/configfilearg), args.py (component args like
pkg/daemons/config GetArgs, and the semantic comparison), journal.py (the
"Running kube-apiserver ..." lines since the current start), discovery.py
(unit state, main process, role, start time).
"""
