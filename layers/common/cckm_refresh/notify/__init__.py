"""Notifications: from the results table's stream to people (SNS, optional chat webhook).

``events`` decides which records notify and what people read; ``ledger`` remembers what was
sent; ``delivery`` publishes once; ``webhook`` mirrors to chat in the time left; ``stream``
ties them to a stream batch (SNS for every record first, then the webhook) for
``functions/notify/app.py``; ``wiring`` builds them with the container's clients.
"""
