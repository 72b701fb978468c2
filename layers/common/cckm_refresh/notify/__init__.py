"""Notifications: from the results table's stream to people (SNS, optional chat webhook).

``events``: which records notify, and what people read; ``delivery``: SNS once (and the ledger
of what was sent); ``webhook``: the chat mirror; ``stream``: a stream batch, for
``functions/notify/app.py``; ``wiring``: built with the container's clients.
"""
