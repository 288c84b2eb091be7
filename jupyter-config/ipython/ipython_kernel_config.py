# Installed by jupyter-functionai into <sys.prefix>/etc/ipython.
# Kernels started by a Jupyter server running the jupyter_functionai extension
# (which sets FUNCTIONAI_PARENT_URL for them) load %%function and %fai by
# themselves; other IPython sessions are left alone.
import os

if os.environ.get("FUNCTIONAI_PARENT_URL"):
    c.InteractiveShellApp.extensions.append("jupyter_functionai")  # type: ignore[name-defined]  # noqa: F821
