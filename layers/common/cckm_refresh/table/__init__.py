"""The results table (docs/reference.md 5): its item shapes, reads and writes.

``items``: every item's keys, TTL, serialisation and values; ``store.ResultStore``: what the
refresh path writes with (``runs.RunBook``: runs and chunks); ``reads.TableReader``: what the CLI,
the notifier's run digest and the demo read. Importing this package imports none of them, so each
function's code reaches only the table calls it makes.
"""
