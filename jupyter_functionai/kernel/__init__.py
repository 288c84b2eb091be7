"""Sandbox kernels: Jupyter kernels that run inside functionai sandbox sessions.

The ``functionai-sandbox`` kernel provisioner is
:class:`jupyter_functionai.kernel.provisioner.SandboxProvisioner`; the code it
runs inside each sandbox is :mod:`jupyter_functionai.kernel.handler`. The
provisioner is imported lazily (it needs jupyter_client), so code inside a
sandbox can import this package without it.
"""
