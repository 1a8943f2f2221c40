"""The fault suite (issue 18 item 6): a short mixed load, one injected fault, then the
invariants of ``invariants.py`` after one monitor pass."""
