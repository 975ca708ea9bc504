"""SteerLab's store: typed SQLAlchemy 2.0 models and a small repository API (no torch)."""
