"""Update agent: decides what to install and drives the device layer.

``agent`` runs checks and installs, ``download`` fetches repository files with
bounds, ``policy`` is the device-management policy, ``status`` the status report.
"""
