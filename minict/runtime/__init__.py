"""The runtime side: a bundle becomes a running process, and leaves again.

container.py is each container's lifecycle (run, start, exec, rm); launch.py
is the parent that creates the namespaces and relays (streams.py); init.py is
the child's checklist (mounts.py, execute.py, steps.py its protocol);
cgroups.py, userns.py and network.py set up what the kernel enforces.
"""
