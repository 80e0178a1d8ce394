"""Device layer: the preboot volume.

``preboot`` is the on-disk layout (base images, releases, active pointer, lock),
``journal`` makes every multi-step change finishable or undoable after a crash,
``install`` installs, rolls back, uninstalls and recovers. No trust decisions here:
callers hand in verified manifests.
"""
