"""The local web page (``latent-restore serve``): upload photos, watch them restore, compare, download.

Import :mod:`latent_restore.web.app` for ``create_app``/``serve``; this package itself imports
nothing, so Flask is loaded only when the page is actually used.
"""
