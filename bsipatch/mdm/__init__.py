"""The device-management (MDM) server: declarations out, status reports in, a fleet view.

Server side only: needs the ``mdm`` extra (Starlette, uvicorn, psycopg). The device
agent never imports this package; its client is :mod:`bsipatch.agent.mdm_client`.
"""
