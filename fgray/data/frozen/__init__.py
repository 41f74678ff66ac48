"""Frozen models' passes over a dataset, each computed once and cached in storage: ``embedding_cache``
(a frozen encoder's embedding of every image, the one Ray Data actor that embeds anywhere in fgray)
and ``detect`` (a zero-shot detector's box per image, DVA's object views). The training pipeline
reads their outputs by image id (``fgray.data.pipeline``)."""
