"""Entry point of the guest agent: ``python3 -I -S /.warren/guest/guest.py --socket PATH``.

Deliberately tiny. A script given on the command line is compiled on every start (~10-30 ms for
the agent), while imported modules are loaded from their ``__pycache__`` (~0.3 ms each). The
host compiles the ``guest_agent`` package ahead of time (``warren.guest.precompile()``; pip
does it on install) because inside the sandbox this directory is mounted read-only.
"""

import sys

# -I leaves this script's directory off sys.path; the guest_agent package lives next to it.
sys.path.insert(0, __file__.rpartition("/")[0] or ".")

from guest_agent.server import main

sys.exit(main(sys.argv[1:]))
