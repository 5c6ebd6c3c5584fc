"""Executors run jobs in worker processes with hard timeouts.  ``local``: this machine."""
