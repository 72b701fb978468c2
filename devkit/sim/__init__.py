"""The whole-system simulation: the real run code on a virtual clock, one thread at a time.

``runtime.SimRuntime`` is the ``cckm_refresh.runtime.Runtime`` it runs on; ``world`` models
what surrounds the function (SQS, Lambda's pollers and containers, the scheduler, CTM,
DynamoDB); ``properties`` checks what must hold whatever the schedule.
"""
