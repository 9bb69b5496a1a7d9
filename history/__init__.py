"""audiocap-history: keeps every node's captions in SQLite and answers what happened.

Captions only (never audio). See docs/history.md.
"""
