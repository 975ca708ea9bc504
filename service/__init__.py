"""The service layer: joins the engine (computation) and the store (persistence).

The CLI and the dashboard call only this package; it is the one place that knows both.
"""
