"""The image side: a reference, a registry's answers, and the OCI image layout they fill.

reference.py parses `name[:tag|@digest]`; auth.py, http.py (requests; tls.py,
http_errors.py, timeouts.py) and registry.py speak the distribution API;
mediatypes.py knows the documents; pull.py copies an image into layout.py's
store under $MINICT_DIR/images; gc.py removes what no tag needs.  Nothing here
knows about bundles or containers.
"""
