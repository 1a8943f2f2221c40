"""The preview proxy: HTTP and WebSocket traffic to ports inside sandboxes (docs/networking.md §3),
mounted in front of the CP's app and runnable alone as ``warren proxy``."""
