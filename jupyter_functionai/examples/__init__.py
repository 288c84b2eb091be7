"""Example functions (deployed by ``functionai demo``)."""
