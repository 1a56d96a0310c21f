"""Ray Data stage callables: plain classes whose `__init__` loads a model once per actor and whose
`__call__` maps one batch (dict of numpy columns) to another. They never import Ray themselves."""
