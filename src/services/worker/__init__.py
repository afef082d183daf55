"""The distributed worker: a Scheduler that claims work with leases from the shared store, runs
it under one semaphore and reports each result, with a durable outbox for undelivered reports."""
