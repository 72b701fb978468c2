"""The run: requests taken in, resolved into chunks of one tenancy each, refreshed, recorded.

``service`` is the story on one page; ``intake`` turns a request into a run, ``resolution``
lists its keys into chunks, ``chunks`` refreshes and records them; ``report`` holds the values
a delivery answers with (and the verdict on its SQS message); ``ports`` what the run needs of
the table and the queues.
"""
