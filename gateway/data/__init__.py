"""The gateway's data layer: every table of the gateway store, and the only code that speaks SQL.

One :class:`~gateway.data.engine.Engine` (SQLite today) under small stores, one per concern, each with
typed methods and rows as dataclasses or named tuples; the schema is a numbered list of migrations
(:mod:`gateway.data.schema`) applied at start by :mod:`gateway.data.migrations`. See docs/data.md.
"""
