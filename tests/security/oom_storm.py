"""What a command may end with when it starts in its own sandbox's OOM storm (the guest-OOM
attack tests, sessions 15 and 16): killed (-9, 137), or refused memory by the kernel while it
starts (ENOMEM is answered to charges made in system calls, security.md §16). An exec past its
point of no return ends SIGSEGV (-11); the loader that cannot map its libraries exits 127 (its
message refused by the same storm). Seen in CI: sessions 25 and 26 (session 15's test), 26
(session 16's, crun)."""

STORM_EXIT_CODES = frozenset({0, -9, 137, -11, 127})
