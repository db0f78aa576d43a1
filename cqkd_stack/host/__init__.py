"""What provisions this machine: the Docker engine (and its systemd unit), the swarm, the
kernel settings 1000 tasks need, the base and node images, and a multi-node swarm of
Docker-in-Docker nodes for trying several nodes on one machine. It may use every room
to its right (``live/`` for the image copies, ``core/`` for processes and files).
"""
