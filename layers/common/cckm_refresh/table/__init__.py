"""The results table (docs/reference.md 5): one package owns its item shapes, its reads and its
writes.

``items``: the keys, TTL, serialisation and values of every item; ``store.ResultStore``: what
the refresh path writes with (runs and chunks from ``runs.RunBook``, then outcomes and latest
states); ``reads.TableReader``: what the CLI, the notifier's run digest and the demo read
(``history``: a key's results over time, for the CLI). Importing this package imports none of
them, so each function's code reaches only the table calls it makes.
"""
