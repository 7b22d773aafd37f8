"""FedEngine's command line (``fedengine``) and async Python SDK.

The CLI starts services as subprocesses by module name and never imports their internals.
"""
