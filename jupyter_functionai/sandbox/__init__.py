"""Code that runs inside sandboxes: the worker loop, the template (zygote), isolation and the wire protocol. Shared by every backend."""
