"""The Jupyter server extension: REST API, invoke gateway, auth (the only package that imports tornado)."""
