"""SteerLab engine: models, steering methods, batched generation, metrics, statistics.

The engine computes and nothing else: it never imports the store or the dashboard, and
never prints. Long jobs take a progress callback and a cancel flag.
"""
