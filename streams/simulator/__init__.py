"""The fleet simulator behind ``governor simulate``: plans, drives and knows the truth.

``params`` (what the fleet looks like) -> ``plan`` (every session and step, pure and seeded) ->
``driver`` (plays plans through the real client on a simulated clock) -> ``truth`` (the exact
outcome of every session, folded from the events actually emitted). ``offline`` does the same
without a broker, for unit tests.
"""
