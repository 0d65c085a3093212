"""Security building blocks: the lowest layer, importing nothing else from sosimple_proxy."""
