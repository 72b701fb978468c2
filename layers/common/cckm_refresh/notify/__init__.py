"""Notifications: from the results table's stream to people (SNS, optional chat webhook).

``events``: which records notify, and what people read; ``ledger``: what was sent;
``delivery``: SNS once; ``webhook``: the chat mirror; ``stream``: a stream batch, for
``functions/notify/app.py``; ``wiring``: built with the container's clients.
"""
