"""An example avmae plugin: one entry of each of the seven kinds, each with options of its own.

Nothing here is imported by avmae until a config names an entry: the entry points of
``pyproject.toml`` point at the modules below, which avmae loads on first use.
"""
