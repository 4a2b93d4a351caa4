"""Process tuning with no protocol in it: CPU affinity and the garbage collector.
Imports nothing of the layers above."""
