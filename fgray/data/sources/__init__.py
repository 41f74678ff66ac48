"""Where a dataset's images come from, up to its prepared shards (``fgray.data.schema``'s contract):
``readers`` (each public dataset's layout, read into records), ``prepare`` (records -> Parquet shards
and manifest, through Ray Data) and the built-in synthetic birds (``synthetic``: the renderer;
``synthetic_shapes``: its polygons; ``synthetic_shards``: the set written as shards, cached per spec).
Reading prepared shards is ``fgray.data.rows``'."""
