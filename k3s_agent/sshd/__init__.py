"""What k3s-agentd knows about the host's OpenSSH server.

config.py reads sshd_config the way sshd does (which file:line sets a
keyword); facts.py asks sshd itself (`sshd -T`, kept in a per-caller cache)
and the system (listening sockets, ssh.socket) where it listens. The sshd
control and the firewall both read these facts here; neither imports the other.
"""
