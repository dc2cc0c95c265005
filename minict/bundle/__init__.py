"""The bundle side: from a stored image to an OCI runtime bundle (rootfs + config.json).

tar.py reads a layer's tar stream (layerstream.py inflates it); apply.py
applies each member to the rootfs (rootdirs.py keeps its directories open);
spec.py writes config.json with capabilities.py, devices.py and seccomp.py's
rules; create.py runs the whole step for one container.
"""
